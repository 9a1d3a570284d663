"""MSSanté connector: send reports as IHE XDM mails, integrate XDM mails received by IMAP.

Public entry points (see docs/mssante.md):
* settings: `MssChannelSettings` (engine.mss.settings)
* sending: `plan_mails`, `MssSender`, `send_document`, `submission_outcomes` (engine.mss.outbound)
* XDM: `build_xdm`, `read_xdm` (engine.mss.xdm)
* acks: `parse_report`, `outcomes_for_report`, `build_mdn` (engine.mss.notifications)
* receiving: `MailboxPoller`, `MailIntake` (engine.mss.inbound), `build_lps_mdm` (engine.mss.lps)
* state: `MssStore` (engine.mss.store); test peer: engine.sim.mss, engine.mss.testpki
"""

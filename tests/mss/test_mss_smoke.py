import pytest_twisted
from twisted.internet import reactor

from engine.mss.outbound import MssSender, OutgoingMail
from email.message import EmailMessage
from mss_helpers import channel_settings


@pytest_twisted.ensureDeferred
async def test_smoke(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    msg = EmailMessage()
    msg["From"] = settings.mailbox_address
    msg["To"] = "a@b.mssante.fr"
    msg["Subject"] = "x"
    msg.set_content("hello")
    res = await MssSender(settings, reactor).send(OutgoingMail("professional", ["a@b.mssante.fr"], msg, "<x@y>"))
    print(res)
    assert res[0].accepted
    assert operator.operator.received

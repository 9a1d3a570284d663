from engine.mllp.framing import Frame, MLLPDecoder, Noise, Oversized, frame

MSG = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1\r"


def feed_bytewise(decoder: MLLPDecoder, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        events += decoder.feed(data[i : i + 1])
    return events


def test_one_byte_at_a_time_yields_each_frame_once():
    stream = frame(MSG) + frame(MSG.replace(b"|1|", b"|2|"))
    events = feed_bytewise(MLLPDecoder(), stream)
    assert [type(e) for e in events] == [Frame, Frame]
    assert events[0].payload == MSG
    assert b"|2|" in events[1].payload


def test_merged_frames_in_one_read():
    events = MLLPDecoder().feed(frame(MSG) * 3)
    assert [e.payload for e in events] == [MSG] * 3


def test_frame_split_inside_end_block():
    decoder = MLLPDecoder()
    data = frame(MSG)
    assert decoder.feed(data[:-1]) == []
    assert decoder.feed(data[-1:]) == [Frame(MSG)]


def test_bytes_before_start_block_are_reported_as_noise():
    events = MLLPDecoder().feed(b"GARBAGE" + frame(MSG))
    assert events == [Noise(b"GARBAGE"), Frame(MSG)]


def test_lf_separators_are_kept_verbatim_in_the_frame():
    payload = MSG.replace(b"\r", b"\n")
    assert MLLPDecoder().feed(frame(payload)) == [Frame(payload)]


def test_oversized_frame_is_reported_once_then_skipped():
    decoder = MLLPDecoder(max_size=100, head_size=10)
    big = b"\x0bMSH|" + b"x" * 500 + b"\x1c\x0d"
    events = []
    for i in range(0, len(big), 7):
        events += decoder.feed(big[i : i + 7])
    events += decoder.feed(frame(MSG))
    assert isinstance(events[0], Oversized) and events[0].head == b"MSH|xxxxxx"
    assert events[1:] == [Frame(MSG)]


def test_oversized_frame_completed_in_one_read():
    decoder = MLLPDecoder(max_size=10)
    events = decoder.feed(frame(b"y" * 50) + frame(b"short"))
    assert isinstance(events[0], Oversized) and events[0].size_seen == 50
    assert events[1] == Frame(b"short")


def test_one_byte_feed_of_large_frame_is_linear():
    # 200 KB fed one byte at a time must complete (quadratic rescanning would take minutes).
    payload = b"MSH|" + b"z" * 200_000
    decoder = MLLPDecoder()
    events = feed_bytewise(decoder, frame(payload))
    assert events == [Frame(payload)]
    assert decoder.pending == 0


def test_client_send_after_the_peer_left_fails_at_once():
    """A message sent on a connection already lost fails instead of waiting for an ACK forever."""
    from twisted.internet import error
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from engine.mllp.client import MLLPClientProtocol

    client = MLLPClientProtocol()
    client.makeConnection(StringTransport())
    client.connectionLost(Failure(error.ConnectionDone()))
    failures = []
    client.send(MSG).addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(error.ConnectionLost)


def test_a_doubled_start_block_opens_one_frame():
    decoder = MLLPDecoder()
    assert decoder.feed(b"\x0b\x0bMSH|^~\\&|A\r\x1c\r") == [Frame(b"MSH|^~\\&|A\r")]
    # split between the two VTs: the frame keeps the second one, which the MSH scan skips
    decoder.feed(b"\x0b")
    [split] = decoder.feed(b"\x0bMSH|^~\\&|A|B|C|D|20260101||ADT^A01|9|P|2.5\r\x1c\r")
    from engine.hl7.scan import scan

    assert scan(split.payload).control_id == "9"

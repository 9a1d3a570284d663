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


class GeneralPathOnly(MLLPDecoder):
    def _one_whole_frame(self, data):
        return None


def test_whole_frames_read_one_per_chunk_give_what_the_general_path_gives():
    # A read holding exactly one frame takes a shorter path (no buffer copies). On random streams
    # of frames, noise, doubled start blocks, empty and oversized frames, cut where the pieces
    # end (that path) and at random, it gives the events of the general path cut the same way.
    import random

    rng = random.Random(15)
    pieces = [
        frame(MSG),
        frame(b""),
        frame(MSG.replace(b"\r", b"\n")),
        b"\x0b" + frame(MSG),
        b"NOISE" + frame(MSG),
        frame(b"x" * 300),
        frame(b"y" * 199),
        b"\x0bMSH|no end",
        frame(MSG) + frame(MSG),
        frame(MSG)[:-1],
        b"\r\n",
        frame(b"A\x1c\rB"),
        frame(b"A\x1cB\x1c"),  # FS bytes that end nothing
        b"\x0bMSH|split end\x1c",
        b"\r",
    ]
    for _ in range(300):
        chosen = [rng.choice(pieces) for _ in range(rng.randint(1, 8))]
        stream = b"".join(chosen)
        cuts = sorted(rng.sample(range(1, len(stream)), min(3, len(stream) - 1)))
        for chunks in (chosen, [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]):
            fast, general = MLLPDecoder(max_size=200), GeneralPathOnly(max_size=200)
            got = [event for chunk in chunks for event in fast.feed(chunk)]
            assert got == [event for chunk in chunks for event in general.feed(chunk)], chunks
            assert (fast.frames_started, fast.pending, fast.mid_frame) == (
                general.frames_started,
                general.pending,
                general.mid_frame,
            )


def test_an_fs_byte_inside_a_frame_does_not_end_it():
    payload = MSG + b"NTE|1||a\x1cb\r"
    assert MLLPDecoder().feed(frame(payload)) == [Frame(payload)]
    assert feed_bytewise(MLLPDecoder(), frame(payload)) == [Frame(payload)]


def test_a_whole_frame_in_one_read_is_read_without_the_buffer():
    decoder = MLLPDecoder()
    assert decoder.feed(frame(MSG)) == [Frame(MSG)]
    assert decoder.pending == 0 and not decoder.mid_frame and decoder.frames_started == 1
    assert decoder.feed(frame(MSG)[:10]) == [] and decoder.mid_frame  # a part: the general path

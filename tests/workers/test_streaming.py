"""DeltaTracker: deltas add up to the final text and never show part of a stop string."""

from __future__ import annotations

from workers.streaming import DeltaTracker

VOCAB = {i: ch for i, ch in enumerate("abcdefghij XYZ")}
EOS = 99


def decode(tokens: list[int]) -> str:
    return "".join(VOCAB[t] for t in tokens if t != EOS)


def run(tokens: list[int], stops: tuple[str, ...]) -> tuple[list[str], DeltaTracker]:
    tracker = DeltaTracker(stops, [EOS], decode)
    return [d for d in (tracker.push(t) for t in tokens) if d], tracker


def test_plain_text_streams_token_by_token() -> None:
    deltas, tracker = run([0, 1, 2, 10, 3], ())
    assert deltas == ["a", "b", "c", " ", "d"]
    assert tracker.finish("abc d") == ""


def test_a_stop_string_is_never_half_sent() -> None:
    # "XYZ" is the stop: "X" and "Y" must be held back until it is clear whether it completes.
    tokens = [0, 1, 11, 12, 2, 11, 12, 13, 4]
    deltas, tracker = run(tokens, ("XYZ",))
    sent = "".join(deltas)
    assert sent == "abXYc"  # "XY" went out only once "c" showed it was no stop
    assert "XYZ" not in sent and tracker.closed
    assert tracker.finish("abXYc") == ""


def test_eos_ends_the_row_and_finish_sends_the_rest() -> None:
    deltas, tracker = run([0, 11, EOS, 1], ("XYZ",))
    assert "".join(deltas) == "aX" and tracker.closed
    tracker2 = DeltaTracker(("long stop",), [EOS], decode)
    for t in [0, 1, 2]:
        tracker2.push(t)
    assert tracker2.sent == ""  # everything is within the hold-back window
    assert tracker2.finish("abc") == "abc"

"""The runtime's one-line messages for what the kernel reports (no GPU needed: the error
words are what `report` writes)."""

import pytest

from tilert_compiler.runtime.gpu import describe_error


def words(code, value, expected, counter=-1):
    return [code, 17, 345, counter, value, expected, 0, 0]  # sm 17, task t345


@pytest.mark.parametrize(
    "e,says",
    [
        (
            words(1, 3, 5, counter=12),
            "dependency wait timed out: sm 17, task t345, counter c12 = 3",
        ),
        (words(4, 1024, 1), "its input at act offset 1024 never carried parity 1"),
        (words(3, 1, 0), "the ring stage's weights never landed (a consumer waited), phase"),
        (words(3, 0, 1), "the producer's earlier copy never landed, phase parity 0"),
        (words(3, 1, 2), "the consumers never released a ring stage (the producer waited)"),
        (words(2, 9, 0), "unknown task kind in the task table: sm 17, task t345, kind 9"),
    ],
)
def test_each_kernel_error_names_sm_task_and_what_was_waited_for(e, says):
    msg = describe_error(e, "step 3")
    assert says in msg and "(step 3)" in msg and "call reset()" in msg
    assert "\n" not in msg


def test_the_ring_waits_are_told_apart_and_an_unknown_code_still_reads():
    ring = {describe_error(words(3, 0, w), "step 0") for w in (0, 1, 2)}
    assert len(ring) == 3 and not any("counter c" in m for m in ring)
    assert describe_error(words(99, 0, 0), "step 0").startswith("error 99: sm 17, task t345")


def test_the_kernel_reports_the_codes_the_runtime_names():
    """One definition of the error codes and of the ring waits (ir/tasktable.py): the
    kernel's constants are those, and the runtime has a name for each."""
    import re

    import tilert_compiler as tc
    from tilert_compiler.ir import tasktable as tt

    src = tc.compile("tiny-llama", nvcc=False).source
    codes = dict(re.findall(r"constexpr int kErr(\w+) = (\d+);", src))
    assert {k: int(v) for k, v in codes.items()} == {
        "Timeout": tt.ERR_TIMEOUT,
        "BadKind": tt.ERR_BAD_KIND,
        "StreamTimeout": tt.ERR_STREAM_TIMEOUT,
        "InputTimeout": tt.ERR_INPUT_TIMEOUT,
    }
    for code in codes.values():
        assert not describe_error(words(int(code), 0, 0), "step 0").startswith("error ")
    waits = dict(re.findall(r"kWait(\w+) = (\d+);", src))
    assert {k: int(v) for k, v in waits.items()} == {
        "Stage": tt.RING_WAIT_STAGE,
        "Copy": tt.RING_WAIT_COPY,
        "Free": tt.RING_WAIT_FREE,
    }
    named = {describe_error(words(tt.ERR_STREAM_TIMEOUT, 0, int(w)), "s") for w in waits.values()}
    assert len(named) == 3 and not any(re.search(r"ring wait \d", m) for m in named)

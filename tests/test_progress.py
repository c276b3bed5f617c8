"""Progress output into files and pipes: one line per few percent, not one per update."""
import io

from ubf.core import progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_file_output_prints_a_line_every_five_percent():
    out = io.StringIO()
    for _ in progress.tqdm(range(1000), desc="work", stream=out, mininterval=0):
        pass
    lines = out.getvalue().splitlines()
    # 0 %, 5 %, ..., 100 %: 21 marks, each printed once, every line complete (no carriage returns)
    assert len(lines) == 21
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("work:") and "0/1000" in lines[0]
    assert "1000/1000" in lines[-1]


def test_manual_updates_and_postfix_in_file_mode():
    out = io.StringIO()
    with progress.tqdm(total=40, desc="train", stream=out, mininterval=0, percent_step=25) as bar:
        for _ in range(40):
            bar.update(1)
            bar.set_postfix(loss="0.1234")
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # 0, 25, 50, 75, 100 %
    assert "loss=0.1234" in lines[-1] and "40/40" in lines[-1]


def test_unknown_total_prints_at_start_and_at_close():
    out = io.StringIO()
    bar = progress.tqdm(desc="scan", stream=out, mininterval=0, interval=3600)
    for _ in range(500):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "500" in lines[-1]


def test_disabled_bar_prints_nothing():
    out = io.StringIO()
    for _ in progress.tqdm(range(10), stream=out, disable=True):
        pass
    assert out.getvalue() == ""


def test_terminal_gets_the_live_bar():
    out = FakeTerminal()
    for _ in progress.tqdm(range(200), stream=out, mininterval=0, miniters=1):
        pass
    # tqdm redraws in place with carriage returns, many more times than 21
    assert out.getvalue().count("\r") > 21

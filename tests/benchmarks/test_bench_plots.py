"""benchmarks/_plots.py: panels of bars and lines saved as PNG; lora/isa charts keep their size and layout."""

import matplotlib.image as mpimg

from benchmarks import isa, lora
from benchmarks._plots import Bars, Lines, Series, bar_chart, chart, line_chart

PNG = b"\x89PNG\r\n\x1a\n"


def test_bar_line_and_mixed_charts_are_pngs_sized_by_panel_count(tmp_path):
    bars = Bars(["a", "b"], [1.0, 2.0], ["tab:gray", "tab:green"], title="t", ylabel="y")
    lines = Lines([Series("x", [1, 2, 4], [3, 2, 1]), Series("y", [1, 2, 4], [1, 2, 3], "k")], xlabel="K", xlog=True)
    paths = [bar_chart(tmp_path / "bars.png", "bars", [bars, bars]), line_chart(tmp_path / "lines.png", "l", [lines]),
             chart(tmp_path / "mixed.png", "mixed", [Lines([Series("p", [1], [2])], points=True), bars], (11, 4))]
    assert all(path.read_bytes()[:8] == PNG for path in paths)
    assert [mpimg.imread(path).shape[:2] for path in paths] == [(440, 990), (440, 495), (440, 1210)]


def test_lora_and_isa_plots_draw_their_recorded_runs(tmp_path):
    lora_runs = [{"name": f"{mode}-zero{zero}", "mode": mode, "model_state_mib": 1.0, "peak_rss_mib": 2.0,
                  "tokens_per_s": 3.0} for zero in (2, 3) for mode in ("full", "lora")]
    isa_runs = [{"name": f"{name}-s0", "train_tokens": tokens, "accuracy_end": 0.6, "gain_per_1k_tokens": 0.01}
                for name, tokens in (("isa", 100), ("random", 100), ("full", 1000))]
    out = [lora.plot(lora_runs, tmp_path / "lora.png", "lora"), isa.plot(isa_runs, tmp_path / "isa.png", "isa")]
    assert [mpimg.imread(path).shape[:2] for path in out] == [(440, 1430), (440, 1210)]

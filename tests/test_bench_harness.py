"""bench/abtest.py, the baseline-against-new harness: medians, the alternating order, ratios, the
temporary baseline worktree and PYTHONPATH switching. No model is run (git and tiny scripts only)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def load(name: str):
    """bench/NAME.py as module NAME (the benches import abtest by that name)."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCH)


@pytest.fixture(scope="module")
def ab():
    return load("abtest")


def test_median(ab):
    assert ab.median([3.0, 1.0, 2.0]) == 2.0
    assert ab.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert ab.median([5.0]) == 5.0
    with pytest.raises(ValueError):
        ab.median([])


def test_schedule_alternates_and_keeps_pairs_together(ab):
    configs = ["fp32/1", "fp32/n"]
    order = ab.schedule(4, configs)
    assert len(order) == 4 * len(configs) * 2
    # each configuration's two runs are back to back, and who goes first alternates by repeat
    for i in range(0, len(order), 2):
        (r1, c1, l1), (r2, c2, l2) = order[i], order[i + 1]
        assert (r1, c1) == (r2, c2)
        assert {l1, l2} == {"baseline", "new"}
        assert l1 == ("baseline" if r1 % 2 == 0 else "new")
    # every configuration runs once per checkout per repeat
    for c in configs:
        for label in ("baseline", "new"):
            assert sorted(r for r, cc, ll in order if cc == c and ll == label) == [0, 1, 2, 3]
    firsts = [lab for k, (_, _, lab) in enumerate(order) if k % 2 == 0]
    assert firsts.count("baseline") == firsts.count("new")
    with pytest.raises(ValueError):
        ab.schedule(0, configs)


def test_format_ratio(ab):
    assert ab.format_ratio(1.0, 2.0) == "new/baseline 0.500x (2.00x faster)"
    assert ab.format_ratio(3.0, 2.0) == "new/baseline 1.500x (1.50x slower)"
    assert ab.format_ratio(2.0, 2.0) == "new/baseline 1.000x (same speed)"
    # rates: higher is better
    assert ab.format_ratio(300.0, 200.0, "rate") == "new/baseline 1.500x (1.50x faster)"
    assert ab.format_ratio(100.0, 200.0, "rate") == "new/baseline 0.500x (2.00x slower)"
    assert ab.speedup(1.0, 1.5) == pytest.approx(1.5)
    assert ab.speedup(150.0, 100.0, "rate") == pytest.approx(1.5)


def test_bar_line(ab):
    line, ok = ab.bar_line("auto less the fixed cost", 1.52, 1.5)
    assert ok and line.endswith("ok") and "(bar >= 1.5x)" in line and "1.520x" in line
    line, ok = ab.bar_line("auto less the fixed cost", 1.02, 1.5)
    assert not ok and line.endswith("MISSED")
    line, ok = ab.bar_line("wall", 2.5, 2.0, "<=", "s")
    assert not ok and "(bar <= 2.0s)" in line


def test_samples_and_figure_line(ab):
    s = ab.Samples()
    for b, n in [(10.0, 5.0), (12.0, 6.0), (11.0, 7.0)]:
        s.add("baseline", ab.Run(b, b / 2, 0, b"", b""))
        s.add("new", ab.Run(n, n / 2, 0, b"", b""))
    assert s.med("baseline") == 11.0 and s.med("new") == 6.0 and s.med("new", "cpu") == 3.0
    assert s.pair_ratios() == pytest.approx([0.5, 0.5, 7 / 11])
    line = ab.figure_line("first score", s)
    assert "baseline    11.00s" in line and "new     6.00s" in line
    assert "new/baseline 0.545x (1.83x faster)" in line
    d = s.as_dict()
    assert d["wall_baseline_median"] == 11.0 and d["wall_new"] == [5.0, 6.0, 7.0]


def test_importtime_summary(ab):
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       100 |        100 |     torch._C",
            "import time:      1400 |       1500 |   torch",
            "import time:       500 |       2500 | transformers",
            "import time:        50 |         50 | json",
            "some other stderr line",
        ]
    )
    s = ab.importtime_summary(stderr, ["torch", "transformers", "peft"])
    assert s["total_s"] == pytest.approx(0.00255)
    torch = s["modules"]["torch"]
    assert torch["own_s"] == pytest.approx(0.0015)  # torch and torch._C's self times
    assert torch["cumulative_s"] == pytest.approx(0.0015)
    assert torch["depth"] == 1 and torch["imported_by"] == "transformers"
    assert s["modules"]["transformers"]["imported_by"] is None
    assert s["modules"]["transformers"]["own_s"] == pytest.approx(0.0005)
    assert "peft" not in s["modules"] and s["count"] == 4


def test_machine_info_and_busy_note(ab):
    info = ab.machine_info()
    assert set(info["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert len(info["load_start"]) == 3 and info["torch"]
    text = ab.format_machine({**info, "load_end": [0.1, 0.2, 0.3], "auto_dtype": {"new": "fp32"}})
    assert "load average" in text and "at end" in text and "new: fp32" in text
    assert "avx512_bf16=" in text
    idle = {**info, "usable_cores": 2, "load_start": [0.2, 0, 0], "load_end": [1.4, 0, 0]}
    assert ab.busy_note(idle).endswith("an idle machine")  # 1.4 at the end: 1 of it the bench's own run
    assert ab.busy_note({**idle, "load_end": [3.0, 0, 0]}).startswith("NOTE")
    assert ab.busy_note(idle, own=0).startswith("NOTE")
    assert ab.busy_note({**idle, "load_start": [1.2, 0, 0]}).startswith("NOTE")


def test_auto_rule(ab):
    assert ab.auto_rule({"avx2"}, {}) == "fp32"
    assert ab.auto_rule({"avx2", "amx_bf16", "amx_tile"}, {}) == "bf16"
    assert ab.auto_rule({"avx512_bf16"}, {}) == "bf16"
    assert ab.auto_rule({"avx512_bf16"}, {"RT_CPU_BF16": "0"}) == "fp32 (RT_CPU_BF16=0)"


def test_default_baseline(ab, tmp_path, monkeypatch):
    f = tmp_path / "BASELINE"
    f.write_text("# a comment line\n0123abcd  # main on some day\n")
    monkeypatch.setattr(ab, "BASELINE_FILE", str(f))
    assert ab.default_baseline() == "0123abcd"
    monkeypatch.setattr(ab, "BASELINE_FILE", str(tmp_path / "missing"))
    assert ab.default_baseline() == "main"
    # the shipped file names a commit
    with open(os.path.join(BENCH, "BASELINE")) as fh:
        assert len(fh.read().split()[0]) == 40


def test_child_env(ab, monkeypatch):
    monkeypatch.setenv("RT_MODEL", "x")
    monkeypatch.setenv("RT_BASE_MODEL", "y")
    monkeypatch.setenv("RT_CPU_BF16", "0")
    env = ab.child_env("/some/checkout", threads=1)
    assert env["PYTHONPATH"] == "/some/checkout"
    assert "RT_MODEL" not in env and "RT_BASE_MODEL" not in env and env["RT_CPU_BF16"] == "0"
    assert env["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert ab.child_env("/c", threads=0)["OMP_NUM_THREADS"] == "7"


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repo(path, version: str) -> None:
    os.makedirs(path / "rtools", exist_ok=True)
    (path / "rtools" / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (path / "rtools" / "cli.py").write_text(
        "import os, sys\n"
        "import rtools\n"
        "def main():\n"
        "    print(rtools.VERSION, sys.argv[0], os.environ['OMP_NUM_THREADS'], sys.stdin.read().strip())\n"
        "    return 0\n"
    )
    (path / "setup.cfg").write_text("[options.entry_points]\nconsole_scripts =\n    rt-x = rtools.cli:main\n")


def test_checkouts_worktree_and_pythonpath(ab, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    make_repo(repo, "old")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "old")
    make_repo(repo, "new")
    git(repo, "commit", "-qam", "new")
    (repo / "rtools" / "__init__.py").write_text("VERSION = 'dirty'\n")  # the working tree is what is tested
    with ab.checkouts("HEAD~1", str(repo)) as (base, new):
        assert base.temporary and os.path.isdir(base.path) and base.path != str(repo)
        assert new.path == str(repo) and new.rev.endswith("uncommitted changes in rtools/")
        outs = {}
        for co in (base, new):
            run = ab.timed(co.command("rt-x"), co.env(1), b"hi\n", cwd=co.path)
            assert run.rc == 0 and run.wall > 0 and run.cpu >= 0
            outs[co.label] = run.stdout.decode().split()
        listed = subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True).stdout
        assert base.path in listed
    assert outs["baseline"] == ["old", "rt-x", "1", "hi"]
    assert outs["new"] == ["dirty", "rt-x", "1", "hi"]
    assert not os.path.exists(base.path)  # removed at the end
    listed = subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True).stdout
    assert base.path not in listed
    with pytest.raises(SystemExit, match="not a commit"):
        with ab.checkouts("no-such-rev", str(repo)):
            pass
    # a directory is used as it is
    with ab.checkouts(str(repo), str(repo)) as (base, new):
        assert not base.temporary and base.path == str(repo)


def test_entry_point_from_pyproject(ab, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project.scripts]\nrt-score = "rtools.cli:score_main"\n')
    assert ab.entry_point(str(tmp_path), "rt-score") == ("rtools.cli", "score_main")
    with pytest.raises(SystemExit):
        ab.entry_point(str(tmp_path), "rt-nothing")
    # this checkout's own console scripts resolve
    assert ab.entry_point(ROOT, "rt-score")[1] == "main"


def test_score_comparisons():
    fs = load("bench_first_score")
    a = [{"p_refuse": 0.25, "p_respond": 0.75}]
    assert fs.max_diff(a, [{"p_refuse": 0.25, "p_respond": 0.75}]) == 0.0
    assert fs.max_diff(a, [{"p_refuse": 0.2500005, "p_respond": 0.75}]) == pytest.approx(5e-7)
    assert fs.max_diff(a, []) == float("inf")
    assert fs.max_diff(a, [{"p_refuse": 0.25}]) == float("inf")
    cat = [{"p_refuse": 0.5, "p_respond": 0.5, "p_cat": {"a": 0.1, "b": 0.4}}]
    assert fs.max_diff(
        cat, [{"p_refuse": 0.5, "p_respond": 0.5, "p_cat": {"a": 0.1, "b": 0.3}}]
    ) == pytest.approx(0.1)

    sc = load("bench_score")
    out = b'{"p_refuse": 0.1, "p_respond": 0.9}\n{"p_refuse": 0.2, "p_respond": 0.8, "p_cat": {"b": 0.1, "a": 0.1}}\n'
    rows = sc.probs(out)
    assert rows == [[0.1, 0.9], [0.2, 0.8, 0.1, 0.1]]
    assert sc.max_diff(rows, [[0.1, 0.9], [0.2, 0.8, 0.1, 0.3]]) == pytest.approx(0.2)


def test_sample_prompts(tmp_path):
    sc = load("bench_score")
    for name, k in (("coconot_eval.jsonl", 5), ("coconot_contrast_eval.jsonl", 4)):
        with open(tmp_path / name, "w") as fh:
            for i in range(k):
                fh.write(f'{{"id": "{name[:5]}{i}", "prompt": "p {name} {i}"}}\n')
    few = sc.sample_prompts(str(tmp_path), 4, 0)
    assert len(few) == 4 and all("contrast" not in r["prompt"] for r in few)
    assert few == sc.sample_prompts(str(tmp_path), 4, 0)  # seeded
    many = sc.sample_prompts(str(tmp_path), 8, 0)
    assert len(many) == 8 and len({r["prompt"] for r in many}) == 8
    with pytest.raises(SystemExit):
        sc.sample_prompts(str(tmp_path), 10, 0)


def test_profile_summary_lists_the_checkouts_functions(tmp_path):
    fs = load("bench_first_score")
    pkg = tmp_path / "rtools"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "work.py").write_text(
        "import time\n"
        "def load_everything():\n"
        "    t = time.perf_counter()\n"
        "    while time.perf_counter() - t < 0.05:\n"
        "        pass\n"
    )
    prof = tmp_path / "run.prof"
    script = tmp_path / "main.py"
    script.write_text("import rtools.work\nrtools.work.load_everything()\n")
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(prof), str(script)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    rows = dict(fs.profile_summary(str(prof), str(tmp_path)))
    assert rows["total (under cProfile)"] > 0.04
    assert rows["imports (importlib _find_and_load)"] >= 0
    own = [k for k in rows if k.startswith("rtools/work.py:") and k.endswith("load_everything")]
    assert own and rows[own[0]] >= 0.04


def test_timed_marks_notes_cpu_at_each_progress_line(ab, tmp_path):
    script = tmp_path / "steps.py"
    script.write_text(
        "import sys, time\n"
        "print('starting', file=sys.stderr, flush=True)\n"
        "for k in range(1, 4):\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 0.05 * k:\n"
        "        pass\n"
        "    print(f'rt-x: step {k}/3 (33%), loss 1.0', file=sys.stderr, flush=True)\n"
        "print('{\"done\": true}')\n"
    )
    run, marks = ab.timed_marks([sys.executable, str(script)], ab.child_env(ROOT), r"\bstep (\d+)/\d+")
    assert run.rc == 0 and run.stdout.strip() == b'{"done": true}' and b"starting" in run.stderr
    assert sorted(marks) == [1, 2, 3]
    step3 = marks[3][1] - marks[2][1]  # CPU seconds of the third step: 0.15 of busy work
    assert 0.1 < step3 < 0.5
    assert marks[1][0] < marks[2][0] < marks[3][0] <= run.wall


def test_timed_steps():
    lora = load("bench_lora")
    marks = {1: (10.0, 5.0), 2: (12.0, 6.0), 3: (15.0, 8.0)}
    st = lora.timed_steps([50.0, 100.0, 40.0], marks, warmup=1)
    assert st.rates == [100.0, 40.0] and st.cpu == [1.0, 2.0]
    assert st.tokens == [200.0, 120.0] and st.tokens_per_cpu_s == pytest.approx(320 / 3)
    assert st.median_rate == 70.0
    # a missing mark (or no warm-up step to start from): no CPU figures, the rates remain
    assert lora.timed_steps([50.0, 100.0, 40.0], {1: (1.0, 1.0), 3: (2.0, 2.0)}, 1).cpu == []
    assert lora.timed_steps([50.0, 100.0], {1: (1.0, 1.0), 2: (2.0, 2.0)}, 0).cpu == []

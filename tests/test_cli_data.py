import json
import subprocess
import sys

from tests.build.test_samples import make_dialogue


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mi_llm", *args], capture_output=True, text=True, cwd=cwd)


def test_build_bad_line_one_line_error_exit_2_no_output(tmp_path):
    src = tmp_path / "d.jsonl"
    good = make_dialogue("a", 2).model_dump_json()
    src.write_text(good + "\n" + '{"id": "b", "source": "s", "language": "fr", "turns": []}\n')
    out = tmp_path / "out"
    r = run("data", "build", str(src), "-o", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{src}:2: language")
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_import_dialogues_and_build(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(make_dialogue(f"d{i}", 2).model_dump_json() + "\n" for i in range(10)))
    r = run("data", "import", "dialogues", str(src), "-o", str(tmp_path / "n.jsonl"))
    assert r.returncode == 0, r.stderr
    r = run("data", "build", str(tmp_path / "n.jsonl"), "-o", str(tmp_path / "out"), "--test", "3")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "build.json").read_text())
    assert summary["test"]["dialogues"] == 3 and summary["train"]["dialogues"] == 7


def test_unknown_source_lists_choices(tmp_path):
    r = run("data", "import", "nosuch", str(tmp_path), "-o", str(tmp_path / "x.jsonl"))
    assert r.returncode == 2 and "choose one of: cpsycound" in r.stderr

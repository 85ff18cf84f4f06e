"""`pixellm --help`, `pixellm CMD --help` and cheap commands start without the model stack.

Building the parser must not import torch & co. (they cost seconds and most of a GB): each check
runs in a fresh interpreter and looks at `sys.modules` (or `-X importtime`) rather than at the
clock, so it does not flake on a busy machine."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from pixellm.cli import COMMANDS, build_parser

MODEL_STACK = ("torch", "transformers", "deepspeed", "peft")
# also kept out of the parser: numpy and scipy alone take most of a second to import
PARSER_FORBIDDEN = (*MODEL_STACK, "numpy", "scipy")

# runs `pixellm.cli.main(argv)` and reports its exit code and which forbidden modules got imported
PROBE = """
import json, sys
from pixellm.cli import main
argv, forbidden = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:
    code = main(argv)
except SystemExit as e:
    code = e.code
print("PROBE " + json.dumps({"code": code, "imported": [m for m in forbidden if m in sys.modules]}))
"""


def probe(argv: list[str], forbidden: tuple[str, ...], cwd=None) -> tuple[dict, str]:
    """(report, stdout) of `main(argv)` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(forbidden)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    *out, last = proc.stdout.rstrip("\n").split("\n")
    assert last.startswith("PROBE "), proc.stdout + proc.stderr
    return json.loads(last[len("PROBE "):]), "\n".join(out)


def test_build_parser_imports_no_heavy_module():
    code = ("import json, sys; from pixellm.cli import build_parser; build_parser(); "
            f"print(json.dumps([m for m in {list(PARSER_FORBIDDEN)!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], "building the pixellm parser imported these"


def test_python_m_pixellm_help_lists_every_command_without_heavy_imports():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pixellm", "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout
    # -X importtime writes "import time: self | cumulative | <indent>module" per import to stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "pixellm.cli" in imported
    heavy = {m for m in imported if m.split(".")[0] in PARSER_FORBIDDEN}
    assert not heavy, f"`python -m pixellm --help` imported {sorted(heavy)[:10]}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_subcommand_help_imports_no_heavy_module(command):
    report, out = probe([command, "--help"], PARSER_FORBIDDEN)
    assert report == {"code": 0, "imported": []}
    assert out.startswith(f"usage: pixellm {command}")


def test_validate_data_custom_runs_without_the_model_stack(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "img.png")
    record = {"image": "img.png", "conversations": [{"question": "Any cat?", "answer": "There is no cat."}]}
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    argv = ["validate-data", "custom", "--annotations", str(tmp_path / "data.jsonl"), "--image-root", str(tmp_path)]
    report, out = probe(argv, MODEL_STACK)
    assert report == {"code": 0, "imported": []}
    assert out.splitlines()[-1] == "1 records checked, 0 problems found, 0 warnings"


def test_score_choices_are_the_metric_protocols():
    """`pixellm score` offers exactly the protocols the metrics implement."""
    from pixellm.evaluation import score
    from pixellm.evaluation.metrics import PROTOCOLS

    for parser in (build_parser(), argparse.ArgumentParser(prog="pixellm")):
        if not parser._subparsers:  # the register callers of pixellm.evaluation.score use
            score.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["score", "custom", "--predictions", "p.jsonl"])
        action = next(a for a in args.score_parser._actions if a.dest == "protocol")
        assert list(action.choices) == sorted(set(PROTOCOLS))


def test_import_pixellm_is_light_and_exports_resolve():
    code = ("import json, sys, pixellm; "
            f"print(json.dumps([m for m in {list(PARSER_FORBIDDEN)!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []

    import pixellm

    for name in pixellm.__all__:  # every public name resolves (this one imports torch & co.)
        assert getattr(pixellm, name) is not None, name

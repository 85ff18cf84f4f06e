import io
import sys

import numpy as np
import pytest
from conftest import build_tiny
from PIL import Image

from pixellm import chat
from pixellm.cli import main
from pixellm.predictor import PixelLMPredictor, Prediction, Segment
from pixellm.visualize import GAP, colour


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model folder and a small PNG."""
    root = tmp_path_factory.mktemp("chat")
    build_tiny().save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8")).save(root / "shapes.png")
    return root / "model", root / "shapes.png"


def _opens(path):
    with Image.open(path) as im:
        im.load()
        return im.size


def test_one_shot_prints_the_answer_and_writes_the_overlay(saved, tmp_path, capsys):
    model, image = saved
    out = tmp_path / "out.png"
    rc = main(["chat", "--model", str(model), "--image", str(image), "--question", "Segment the red circle.",
               "--out", str(out), "--max-new-tokens", "8"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # what the model says, decoded the way the predictor decodes it (greedy is deterministic)
    expected = PixelLMPredictor.from_pretrained(model).predict(image, "Segment the red circle.", max_new_tokens=8)
    rendered = chat.render_answer(expected.text, [s.phrase for s in expected.segments], False)
    assert captured.out.startswith(rendered + "\n")
    assert f"overlay: {out}" in captured.out
    assert "\x1b[" not in captured.out  # captured stdout is not a terminal: no colour codes
    w, h = _opens(out)
    assert w >= 50 and h > 40


def test_default_out_is_named_after_the_image_in_the_working_directory(saved, tmp_path, monkeypatch, capsys):
    model, image = saved
    monkeypatch.chdir(tmp_path)
    rc = main(["chat", "--model", str(model), "--image", str(image), "-q", "What is here?", "--max-new-tokens", "4"])
    assert rc == 0, capsys.readouterr().err
    _opens(tmp_path / "shapes_pixellm.png")


def test_interactive_mode_reads_stdin_until_an_empty_line(saved, tmp_path, monkeypatch, capsys):
    model, image = saved
    monkeypatch.setattr(sys, "stdin", io.StringIO("Segment the red circle.\nWhat is here?\n\nnever asked\n"))
    rc = main(["chat", "--model", str(model), "--image", str(image), "--out", str(tmp_path / "o.png"),
               "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    _opens(tmp_path / "o_1.png")
    _opens(tmp_path / "o_2.png")
    assert not (tmp_path / "o_3.png").exists()
    assert captured.err.count("question> ") == 3  # the prompt goes to stderr, stdout stays clean
    assert "question>" not in captured.out


def test_interactive_mode_stops_at_eof_and_exit(saved, tmp_path, monkeypatch, capsys):
    model, image = saved
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is here?"))  # EOF without a newline
    assert main(["chat", "--model", str(model), "--image", str(image), "--max-new-tokens", "2"]) == 0
    _opens(tmp_path / "shapes_pixellm_1.png")
    monkeypatch.setattr(sys, "stdin", io.StringIO("exit\nWhat is here?\n"))
    assert main(["chat", "--model", str(model), "--image", str(image), "--max-new-tokens", "2"]) == 0
    capsys.readouterr()


def test_masks_are_listed_with_phrase_score_and_area(saved, tmp_path, monkeypatch, capsys):
    """The answer's groups become markers and each mask gets a line (predictor stubbed: a random
    tiny model rarely emits a codebook group)."""
    model, image = saved
    a = np.zeros((40, 50), bool)
    a[:10, :10] = True
    b = np.zeros((40, 50), bool)
    b[20:, 20:] = True
    canned = Prediction(
        text="The red circle <seg> and the blue square <seg>.",
        segments=[Segment("The red circle", a, 0.873), Segment("the blue square", b, 0.5)],
    )
    monkeypatch.setattr(PixelLMPredictor, "predict", lambda self, *args, **kw: canned)
    out = tmp_path / "o.png"
    rc = main(["chat", "--model", str(model), "--image", str(image), "-q", "Segment both.", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[:3] == [
        "The red circle [1] and the blue square [2].",
        "[1] The red circle (score 0.87, 100 px)",
        "[2] the blue square (score 0.50, 600 px)",
    ]
    px = np.asarray(Image.open(out))
    # the overlay is the right half (the left one is the untouched original)
    assert not np.array_equal(px[:10, 50 + GAP:60 + GAP], np.asarray(Image.open(image))[:10, :10])


def test_colours_match_the_overlay_palette_and_respect_no_color(monkeypatch):
    text = chat.render_answer("The cat <seg> near the dog <seg>.", ["The cat", "near the dog"], True)
    r, g, b = colour(0)
    assert f"\x1b[1;38;2;{r};{g};{b}mThe cat\x1b[0m \x1b[1;38;2;{r};{g};{b}m[1]\x1b[0m" in text
    r, g, b = colour(1)
    assert f"\x1b[1;38;2;{r};{g};{b}mnear the dog\x1b[0m" in text
    assert text.endswith("[2]\x1b[0m.")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert chat.use_colour(Tty())
    assert not chat.use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not chat.use_colour(Tty())


def test_missing_model_folder_is_a_clear_error(saved, tmp_path, capsys):
    _, image = saved
    missing = tmp_path / "no_such_model"
    rc = main(["chat", "--model", str(missing), "--image", str(image), "-q", "hi"])
    err = capsys.readouterr().err
    assert rc != 0
    assert str(missing) in err and "Traceback" not in err
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert main(["chat", "--model", str(not_a_model), "--image", str(image), "-q", "hi"]) != 0
    err = capsys.readouterr().err
    assert str(not_a_model) in err and "pixellm_config.json" in err and "Traceback" not in err


def test_missing_or_unreadable_image_is_a_clear_error(saved, tmp_path, capsys):
    model, _ = saved
    missing = tmp_path / "nope.png"
    assert main(["chat", "--model", str(model), "--image", str(missing), "-q", "hi"]) != 0
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    assert main(["chat", "--model", str(model), "--image", str(junk), "-q", "hi"]) != 0
    err = capsys.readouterr().err
    assert str(junk) in err and "Traceback" not in err


def test_a_question_with_a_codebook_token_is_an_error_line_and_interactive_mode_goes_on(saved, tmp_path,
                                                                                        monkeypatch, capsys):
    model, image = saved
    rc = main(["chat", "--model", str(model), "--image", str(image), "-q", "Where is [SEG0]?",
               "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "error: " in err and "codebook token [SEG0]" in err and "Traceback" not in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("Where is [SEG2]?\n<image>\nWhat is here?\n"))
    rc = main(["chat", "--model", str(model), "--image", str(image), "--out", str(tmp_path / "i.png"),
               "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert rc == 0 and "codebook token [SEG2]" in captured.err
    assert (tmp_path / "i_2.png").is_file()  # the next question was answered

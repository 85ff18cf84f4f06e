"""`pixellm chat`: ask a saved PixelLM about one image from the terminal.

    pixellm chat --model DIR --image IMG [--question Q] [--out OUT.png] [--max-new-tokens N]
                 [--sample --temperature T --top-p P] [--device cpu|cuda] [--dtype ...]

With --question the answer is printed once; without it questions are read from stdin (one a
line) until EOF, an empty line or `exit`, so both a terminal and a pipe work; the prompt goes to
stderr. Each answer is printed with its codebook groups written as markers `[1]`, `[2]`, ... and
each referred phrase coloured like its mask in the overlay PNG saved next to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .constants import SEG_PLACEHOLDER
from .precision import DTYPE_CHOICES

RESET = "\x1b[0m"
EXIT_WORDS = {"exit", "quit", ":q"}


def use_colour(stream=None) -> bool:
    """ANSI colour only on a terminal and when NO_COLOR is unset or empty (no-color.org)."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, index: int, enabled: bool) -> str:
    """`text` in the overlay colour of mask `index` (24-bit ANSI), or unchanged."""
    if not enabled or not text:
        return text
    from .visualize import colour

    r, g, b = colour(index)
    return f"\x1b[1;38;2;{r};{g};{b}m{text}{RESET}"


def render_answer(text: str, phrases: list[str], coloured: bool) -> str:
    """The answer with the i-th `<seg>` written as `[i+1]` and its phrase coloured like mask i."""
    parts = text.split(SEG_PLACEHOLDER)
    out = []
    for i, part in enumerate(parts[:-1]):
        phrase = phrases[i] if i < len(phrases) else ""
        at = part.rfind(phrase) if phrase else -1
        if at >= 0:
            part = part[:at] + paint(phrase, i, coloured) + part[at + len(phrase):]
        out.append(part + paint(f"[{i + 1}]", i, coloured))
    out.append(parts[-1])
    return "".join(out)


def render_segments(segments, coloured: bool) -> list[str]:
    """One line per mask: `[1] phrase (score 0.87, 1234 px)`."""
    lines = []
    for i, s in enumerate(segments):
        phrase = s.phrase or "(no phrase)"
        lines.append(f"{paint(f'[{i + 1}] {phrase}', i, coloured)} (score {s.score:.2f}, {int(s.mask.sum())} px)")
    return lines


def default_out(image: Path, out: str | None, number: int | None) -> Path:
    """--out, or `<image stem>_pixellm.png` in the working directory; `_<number>` before the
    suffix in interactive mode."""
    path = Path(out) if out else Path(f"{image.stem}_pixellm.png")
    if number is not None:
        path = path.with_name(f"{path.stem}_{number}{path.suffix or '.png'}")
    return path


def _title(question: str, limit: int = 60) -> str:
    question = " ".join(question.split())
    return question if len(question) <= limit else question[: limit - 3] + "..."


class ChatError(Exception):
    """A user-facing problem (missing file, bad device): printed as one line, no traceback."""


def _resolve_device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ChatError("--device cuda requested but no CUDA device is available")
    return name


def load_image(path: str):
    from .data.images import ImageReadError, read_image

    file = Path(path)
    if not file.is_file():
        raise ChatError(f"image {file} not found")
    try:
        return read_image(file)
    except ImageReadError as e:
        raise ChatError(f"cannot read image {e}") from None


def load_predictor(path: str, device: str, dtype):
    from .build import CONFIG_NAME
    from .config import ConfigError
    from .predictor import PixelLMPredictor

    folder = Path(path)
    if not folder.is_dir():
        raise ChatError(f"model folder {folder} not found")
    if not (folder / CONFIG_NAME).is_file():
        raise ChatError(f"{folder} is not a pixellm model folder (no {CONFIG_NAME}; save one with save_pretrained)")
    try:
        return PixelLMPredictor.from_pretrained(folder, device=device, dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, ConfigError) as e:
        raise ChatError(f"cannot load the model in {folder}: {type(e).__name__}: {e}") from None


def answer(predictor, image, question: str, out: Path, generation: dict, coloured: bool) -> None:
    """Run one question, print the marked answer and the mask list, save the overlay."""
    from .data.errors import DataError
    from .visualize import overlay

    try:
        pred = predictor.predict(image, question, **generation)
    except DataError as e:  # e.g. the question writes a codebook token
        raise ChatError(str(e)) from None
    print(render_answer(pred.text, [s.phrase for s in pred.segments], coloured))
    for line in render_segments(pred.segments, coloured):
        print(line)
    if not pred.segments:
        print("(no masks)")
    picture = overlay(image, [s.mask for s in pred.segments], [s.phrase for s in pred.segments], title=_title(question))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"overlay: {out}", flush=True)


def read_questions(stream=None, prompt: str = "question> "):
    """Questions from stdin, one a line, until EOF, an empty line or `exit`."""
    while True:
        stream_now = sys.stdin if stream is None else stream
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = stream_now.readline()
        if not line:  # EOF
            sys.stderr.write("\n")
            return
        question = line.strip()
        if not question or question.lower() in EXIT_WORDS:
            return
        yield question


def run(args: argparse.Namespace) -> int:
    """CLI entry: one-shot with --question, else interactive; user errors exit 1 with one line."""
    if args.max_new_tokens < 1:
        args.chat_parser.error("--max-new-tokens must be >= 1")
    if args.temperature <= 0:
        args.chat_parser.error("--temperature must be > 0")
    if not 0 < args.top_p <= 1:
        args.chat_parser.error("--top-p must be in (0, 1]")
    generation = dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
    )
    coloured = use_colour()
    try:
        image = load_image(args.image)
        device = _resolve_device(args.device)
        predictor = load_predictor(args.model, device, args.dtype)
        image_path = Path(args.image)
        if args.question is not None:
            if not args.question.strip():
                raise ChatError("--question is empty")
            answer(predictor, image, args.question, default_out(image_path, args.out, None), generation, coloured)
            return 0
        for n, question in enumerate(read_questions(), start=1):
            try:
                answer(predictor, image, question, default_out(image_path, args.out, n), generation, coloured)
            except ChatError as e:  # one bad question does not end the session
                print(f"error: {e}", file=sys.stderr)
            print(flush=True)
    except ChatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the overlay cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


def register(subparsers) -> None:
    """Add the `chat` subcommand."""
    p = subparsers.add_parser(
        "chat",
        help="ask a saved PixelLM about an image (answer + coloured masks)",
        description=(
            "Answer a question about an image with a saved PixelLM: prints the answer with each "
            "mask's phrase marked [1], [2], ... and saves a colour overlay PNG. Without --question, "
            "questions are read from stdin until EOF, an empty line or 'exit'."
        ),
    )
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (save_pretrained)")
    p.add_argument("--image", required=True, metavar="IMG", help="image file")
    p.add_argument("--question", "-q", metavar="Q", help="one question (default: interactive, from stdin)")
    p.add_argument(
        "--out", metavar="OUT.png",
        help="overlay PNG (default: <image stem>_pixellm.png in the working directory; "
        "interactive mode numbers them _1, _2, ...)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="answer length limit (default 128)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (with --sample)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto",
        help="weights dtype (default auto: bf16 on CUDA GPUs that support it, else fp16 on CUDA; fp32 on CPU)",
    )
    p.set_defaults(func=run, chat_parser=p)

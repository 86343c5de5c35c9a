#!/usr/bin/env python3
"""Extracts the smoke-tested walk-through from a Markdown file.

A fenced code block whose opening fence follows a line `<!-- smoke -->`
(blank lines may sit between them) is a smoke block. Each of its lines is one
shell command, except blank lines and lines starting with `#`. A line ending
in a backslash continues on the next line. A leading `$ ` prompt is dropped.
A command may end with one marker, removed before it runs:

    # expect: TEXT                   exits 0 and the output contains TEXT
    # expect-within-<N>s: TEXT       retried every 50 ms for up to N seconds
    # expect-within-<N>ms: TEXT        until it exits 0 and shows TEXT
    # expect-error: TEXT             exits non-zero and the output contains TEXT

A command without a marker must exit 0. Markers inside other fenced blocks
are ignored, so the syntax itself can be shown in a code block.

Usage: readme_steps.py FILE [--sub OLD=NEW]... [--human]

--sub replaces an address such as 127.0.0.1:50051 (not followed by another
digit) in commands and expectations. Output: one record per step, fields
separated by \\x1f and records ended by \\0:
line, kind (run|expect|within|error), within_ms, expected text, command.
"""

import argparse
import re
import sys

MARKER = re.compile(r"^\s*<!--\s*smoke\s*-->\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
EXPECT = re.compile(
    r"\s#\s*(?P<kind>expect-error|expect-within-(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s)|expect)"
    r"\s*:[ \t]?(?P<text>.*?)\s*$"
)
ANY_EXPECT = re.compile(r"\s#\s*expect[\w.-]*\s*:")


class ReadmeError(Exception):
    pass


def closes(line, fence):
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip(" ")) <= 3
        and stripped
        and set(stripped) == {fence[0]}
        and len(stripped) >= len(fence)
    )


def blocks(lines):
    """Yields (first_line_number, [lines]) of every smoke block."""
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        fence = FENCE.match(line)
        if fence:  # a block that is not ours: skip it whole
            end = next((j for j in range(i + 1, n) if closes(lines[j], fence.group(1))), None)
            if end is None:
                raise ReadmeError(f"line {i + 1}: code block is never closed")
            i = end + 1
            continue
        if MARKER.match(line):
            j = i + 1
            while j < n and not lines[j].strip():
                j += 1
            fence = FENCE.match(lines[j]) if j < n else None
            if not fence:
                raise ReadmeError(
                    f"line {i + 1}: <!-- smoke --> must be followed by a fenced code block"
                )
            end = next((k for k in range(j + 1, n) if closes(lines[k], fence.group(1))), None)
            if end is None:
                raise ReadmeError(f"line {j + 1}: smoke code block is never closed")
            yield j + 2, lines[j + 1 : end]
            i = end + 1
            continue
        i += 1


def substitute(text, subs):
    for old, new in subs:
        text = re.sub(re.escape(old) + r"(?!\d)", lambda _m, new=new: new, text)
    return text


def steps(lines, subs):
    for first, body in blocks(lines):
        k = 0
        while k < len(body):
            lineno = first + k
            text = body[k].rstrip()
            k += 1
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            while text.endswith("\\") and k < len(body):
                text += "\n" + body[k].rstrip()
                k += 1
            text = substitute(text, subs)
            if text.startswith("$ "):
                text = text[2:]
            head, _, last = text.rpartition("\n")
            kind, within_ms, expected = "run", 0, ""
            m = EXPECT.search(last)
            if m:
                expected = m.group("text")
                if not expected:
                    raise ReadmeError(f"line {lineno}: empty expectation")
                name = m.group("kind")
                if name == "expect":
                    kind = "expect"
                elif name == "expect-error":
                    kind = "error"
                else:
                    kind = "within"
                    scale = 1 if m.group("unit") == "ms" else 1000
                    within_ms = int(float(m.group("n")) * scale)
                last = last[: m.start()].rstrip()
            elif ANY_EXPECT.search(last):
                raise ReadmeError(
                    f"line {lineno}: unknown marker (use '# expect:', "
                    "'# expect-within-<N>s:', '# expect-within-<N>ms:' or '# expect-error:')"
                )
            command = (head + "\n" + last) if head else last
            if not command.strip():
                raise ReadmeError(f"line {lineno}: a marker without a command")
            yield lineno, kind, within_ms, expected, command


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--sub", action="append", default=[], metavar="OLD=NEW")
    parser.add_argument("--human", action="store_true", help="print a readable list")
    args = parser.parse_args()
    subs = []
    for s in args.sub:
        old, sep, new = s.partition("=")
        if not sep or not old:
            parser.error(f"--sub wants OLD=NEW, got {s!r}")
        subs.append((old, new))
    try:
        with open(args.file, encoding="utf-8") as f:
            lines = f.read().splitlines()
        found = list(steps(lines, subs))
    except (OSError, ReadmeError) as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 2
    if not found:
        print(
            f"{args.file}: no smoke steps (a line <!-- smoke --> before a fenced code block)",
            file=sys.stderr,
        )
        return 2
    out = sys.stdout
    for lineno, kind, within_ms, expected, command in found:
        if args.human:
            out.write(f"{lineno}: [{kind} {within_ms}ms {expected!r}] {command}\n")
        else:
            for field in (expected, command):
                if "\x1f" in field or "\0" in field:
                    print(f"{args.file}: line {lineno}: control character", file=sys.stderr)
                    return 2
            out.write(f"{lineno}\x1f{kind}\x1f{within_ms}\x1f{expected}\x1f{command}\0")
    return 0


if __name__ == "__main__":
    sys.exit(main())

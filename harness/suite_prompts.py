"""A suite's [prompts]: inline items or a JSONL file, each prompt with a stable id and its attachments."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .suite import (
    Attachment,
    Prompt,
)
from .tomltable import SuiteError, Table, decode, read_bytes


def _prompt(t: Table, base: Path) -> Prompt:
    t.only({"id", "text", "chat", "kind", "attachments"})
    files = t.get(
        "attachments",
        list,
        [],
        check=lambda v: all(isinstance(x, str) and x for x in v),
        expect="a list of image, audio or video file paths",
    )
    pr = Prompt(
        id=t.get("id", str, check=lambda s: s.strip() != "", expect="a non-empty string"),
        text=t.get("text", str, check=lambda s: s != "", expect="a non-empty string"),
        chat=t.get("chat", bool, False),
        kind=t.get("kind", str, ""),
        attachments=tuple(_attachment(t, base / f) for f in files),
    )
    t.done()
    return pr


def _attachment(t: Table, fp: Path) -> Attachment:
    import mimetypes

    mime = mimetypes.guess_type(fp.name)[0] or ""
    if mime.split("/")[0] not in ("image", "audio", "video"):
        raise t.fail(
            "attachments",
            f"{fp.name}: not an image, audio or video file by its extension (.png, .jpg, .wav, .mp4, ...)",
        )
    try:
        data = read_bytes(fp, "the attachment")
    except SuiteError as e:
        raise t.fail("attachments", str(e)) from None
    return Attachment(path=str(fp.resolve()), mime=mime, sha256=hashlib.sha256(data).hexdigest())


def parse_prompts(t: Table, base: Path) -> tuple[Prompt, ...]:
    items = t.get("items", list, None)
    file = t.get("file", str, None)
    t.done()
    if (items is None) == (file is None):
        raise t.fail("file", "give exactly one of `file` (a JSONL file of prompts) or `items`")
    out: list[Prompt] = []
    if file is not None:
        fp = base / file
        try:
            raw = read_bytes(fp, "the prompt file")
        except SuiteError as e:
            raise t.fail("file", str(e)) from None
        # Only \n ends a JSONL line: a prompt may hold U+2028 or a form feed, which splitlines() would cut at.
        for n, line in enumerate(decode(raw, fp).split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SuiteError(f"{fp}:{n}: not valid JSON ({e.msg})") from None
            out.append(_prompt(Table(str(fp), f"line {n}", obj), fp.parent))
    else:
        out = [_prompt(Table(t.path, f"{t.key('items')}[{i}]", x), base) for i, x in enumerate(items)]
    if not out:
        raise t.fail("file" if file else "items", "no prompts; add at least one")
    ids = [x.id for x in out]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise t.fail("items", f"prompt id {dup!r} appears twice; ids must be unique")
    return tuple(out)

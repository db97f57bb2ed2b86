"""Emoji: names, groups and subgroups from emoji-test.txt, CLDR keywords, Noto Color images."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tasks.sample.debian import find_path
from tasks.sample.items import Item, seeded_order

SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
FONT_SIZE = 109  # the only bitmap strike NotoColorEmoji has
SKIP_GROUPS = {"Component"}  # skin tones and hair styles on their own are no emoji to show


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified emoji line of emoji-test.txt."""

    codepoints: tuple[int, ...]
    name: str
    group: str
    subgroup: str

    @property
    def text(self) -> str:
        return "".join(chr(c) for c in self.codepoints)

    @property
    def key(self) -> str:
        return "-".join(f"{c:x}" for c in self.codepoints)

    @property
    def family(self) -> str:
        """The emoji without skin tone: variants of one emoji are split together."""
        return "-".join(f"{c:x}" for c in self.codepoints if c not in SKIN_TONES and c != 0xFE0F)

    @property
    def has_skin_tone(self) -> bool:
        return any(c in SKIN_TONES for c in self.codepoints)


def parse_emoji_test(path: Path) -> list[EmojiEntry]:
    """The fully-qualified emoji with their group and subgroup, in the file's (CLDR) order."""
    group = subgroup = ""
    out = []
    line_re = re.compile(r"^([0-9A-F ]+);\s*fully-qualified\s*#\s*\S+\s+E\d+\.\d+\s+(.*)$")
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif m := line_re.match(line):
            cps = tuple(int(x, 16) for x in m.group(1).split())
            out.append(EmojiEntry(cps, m.group(2).strip(), group, subgroup))
    return out


def parse_cldr(paths: list[Path]) -> dict[str, tuple[str, list[str]]]:
    """Emoji text without FE0F -> (tts name, keywords), from CLDR annotation files (later wins)."""
    names: dict[str, str] = {}
    words: dict[str, list[str]] = {}
    for path in paths:
        if not path.exists():
            continue
        for node in ET.parse(path).getroot().iter("annotation"):
            cp, text = node.get("cp", ""), (node.text or "").strip()
            if not text or text == "↑↑↑":  # CLDR's "inherited" placeholder
                continue
            if node.get("type") == "tts":
                names[cp] = text
            else:
                words[cp] = [w.strip() for w in text.split("|") if w.strip()]
    return {cp: (names.get(cp, ""), words.get(cp, [])) for cp in set(names) | set(words)}


def render(font_path: Path, entries: list[EmojiEntry], out_dir: Path) -> dict[str, Path]:
    """Render each emoji to a PNG; sequences the font cannot draw as one glyph are left out."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    ref = font.getbbox("\U0001f600")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for e in entries:
        box = font.getbbox(e.text)
        if box[2] - box[0] > (ref[2] - ref[0]) * 1.2:  # drawn as several glyphs: unsupported
            continue
        im = Image.new("RGBA", (int(ref[2]), int(ref[3])), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((0, 0), e.text, font=font, embedded_color=True)
        if im.getbbox() is None:
            continue
        path = out_dir / f"{e.key}.png"
        im.save(path, format="PNG", optimize=False)
        paths[e.key] = path
    return paths


def _sample_families(entries: list[EmojiEntry], max_items: int, seed: int) -> list[EmojiEntry]:
    families: dict[str, list[EmojiEntry]] = {}
    for e in entries:
        families.setdefault(e.family, []).append(e)
    keep: set[str] = set()
    total = 0
    for fam in seeded_order(families, seed, "cap"):
        if total >= max_items:
            break
        keep.add(fam)
        total += len(families[fam])
    return [e for e in entries if e.family in keep]


def load_emoji(
    unicode_pkg: Path,
    cldr_pkg: Path,
    font_pkg: Path,
    languages: tuple[str, ...],
    skin_tones: bool,
    render_dir: Path,
    max_items: int = 0,
    seed: int = 0,
) -> list[Item]:
    """One Item per renderable fully-qualified emoji (no Component group).

    With `max_items`, whole families (an emoji and its skin-tone variants) are sampled by seed.
    """
    entries = parse_emoji_test(find_path(unicode_pkg, "emoji-test.txt", "unicode-data"))
    entries = [
        e for e in entries if e.group not in SKIP_GROUPS and (skin_tones or not e.has_skin_tone)
    ]
    if max_items and max_items < len(entries):
        entries = _sample_families(entries, max_items, seed)
    annotations = find_path(cldr_pkg, "annotations", "unicode-cldr-core", want_dir=True)
    derived = annotations.parent / "annotationsDerived"
    cldr = {
        lang: parse_cldr([annotations / f"{lang}.xml", derived / f"{lang}.xml"])
        for lang in languages
    }
    en = cldr.get("en") or parse_cldr([annotations / "en.xml", derived / "en.xml"])
    images = render(
        find_path(font_pkg, "NotoColorEmoji*.ttf", "fonts-noto-color-emoji"), entries, render_dir
    )
    items = []
    for rank, e in enumerate(entries):
        if e.key not in images:
            continue
        bare = e.text.replace("\ufe0f", "")
        en_name, en_words = en.get(bare, ("", []))
        alts = {}
        for lang in languages:
            name, _ = cldr[lang].get(bare, ("", []))
            alts[lang] = name or (e.name if lang == "en" else "")
        captions = tuple(
            dict.fromkeys(c for c in (e.name, en_name, f"{e.name} emoji", ", ".join(en_words)) if c)
        )
        items.append(
            Item(
                source="emoji",
                item_id=e.key,
                image=str(images[e.key]),
                ext="png",
                category=e.group,
                subcategory=e.subgroup,
                alts=alts,
                title=" | ".join(en_words),
                captions=captions,
                group=e.family,
                rank=rank,
            )
        )
    return items

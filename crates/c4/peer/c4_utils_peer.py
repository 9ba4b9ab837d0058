#!/usr/bin/env python3
"""A small, faithful re-implementation of tfds `c4_utils` (4.9.x) for benchmarking
`fisherkit c4 clean` side by side. NOT the tfds package itself: Apache Beam and
tensorflow-datasets are too heavy to install here, so the per-page functions
(split_wet_file, normalize_url, dedupe_urls, clean_page, the bad-words regex, line
de-duplication, langdetect) are transcribed in plain Python, run in one process.

Sentence splitting: NLTK's Punkt algorithm. The trained English `punkt` pickle cannot be
downloaded here (no network besides package registries), so an *untrained*
PunktSentenceTokenizer is used: same algorithm and cost, no learned abbreviations.

Usage: python3 c4_utils_peer.py BADWORDS WET... [--urls OUT.txt]
Prints pages/s and MB/s (and the time spent per stage) as JSON.
"""
import gzip
import hashlib
import json
import re
import sys
import time

import langdetect
from nltk.tokenize.punkt import PunktSentenceTokenizer

_MAX_LEN = 190000
_CITATION_REGEX = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_END_MARKS = (".", "?", "!", '"')
_ELLIPSIS = "..."
_POLICY_SUBSTRINGS = ["terms of use", "privacy policy", "cookie policy", "uses cookies",
                      "use of cookies", "use cookies"]
_SENT = PunktSentenceTokenizer()


def split_wet_file(path, stats):
    """c4_utils.split_wet_file: line-based, strips lines, skips blank ones."""
    def page(url, timestamp, content):
        text = "\n".join(content)
        if not url:  # warcinfo and other records without a target URI
            return None
        if not text.strip():
            stats["no_content"] += 1
            return None
        return {"url": url, "timestamp": timestamp, "text": text}

    url, timestamp, content = None, None, []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            stats["bytes"] += len(line.encode("utf-8"))
            line = line.strip()
            if not line:
                continue
            if line == "WARC/1.0":
                if url is not None:
                    p = page(url, timestamp, content)
                    if p:
                        yield p
                url, timestamp, content = "", "", []
            elif line.startswith("WARC-Target-URI:"):
                url = line.split(":", 1)[1].strip()
            elif line.startswith("WARC-Date:"):
                timestamp = line.split(":", 1)[1].strip()
            elif line.startswith("WARC-") or line.startswith("Content-"):
                continue
            else:
                content.append(line)
    if url:
        p = page(url, timestamp, content)
        if p:
            yield p


def normalize_url(url):
    url = re.sub(r"https?:\/\/(www\.)?", "", url)
    url = re.sub(r"\?(utm_|ref|feed).*", "", url)
    return url.rstrip("/")


def clean_page(text, min_words=5, min_sentences=3):
    valid, num_sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        if any(len(w) > 1000 for w in line.split()):
            continue
        line = _CITATION_REGEX.sub("", line)
        if not line.endswith(_END_MARKS) or line.endswith(_ELLIPSIS):
            continue
        if len(line.split()) < min_words:
            continue
        low = line.lower()
        if "lorem ipsum" in low:
            return None
        if "javascript" in low:
            continue
        if "{" in line:
            return None
        if any(p in low for p in _POLICY_SUBSTRINGS):
            continue
        num_sentences += len(_SENT.tokenize(line))
        valid.append(line)
    if num_sentences < min_sentences:
        return None
    return "\n".join(valid).strip()


def _hash(text):
    return hashlib.md5(text.strip().lower().encode("utf-8")).hexdigest()


def main():
    args = sys.argv[1:]
    urls_out = None
    if "--urls" in args:
        i = args.index("--urls")
        urls_out = args[i + 1]
        del args[i:i + 2]
    badwords_path, paths = args[0], args[1:]
    words = [w.strip().lower() for w in open(badwords_path, encoding="utf-8") if w.strip()]
    badwords_re = re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(re.escape(w) for w in words)))
    stats = {"bytes": 0, "no_content": 0}
    t = {}
    start = time.perf_counter()
    cpu_start = time.process_time()

    pages = [p for path in paths for p in split_wet_file(path, stats)]
    pages_in = len(pages) + stats["no_content"]
    pages = [p for p in pages if len(p["text"]) <= _MAX_LEN]
    newest = {}
    for p in pages:
        key = normalize_url(p["url"])
        if key not in newest or p["timestamp"] > newest[key]["timestamp"]:
            newest[key] = p
    t["read+url"] = time.perf_counter() - start

    s = time.perf_counter()
    cleaned = []
    for key, p in newest.items():
        text = clean_page(p["text"])
        if text is not None and badwords_re.search(text.lower()) is None:
            # After normalize_url the Beam key is the normalised URL; line dedup uses it.
            cleaned.append(dict(p, text=text, key=key))
    t["clean+badwords"] = time.perf_counter() - s

    s = time.perf_counter()
    owners = {}
    for p in cleaned:
        for line in p["text"].split("\n"):
            h = _hash(line)
            owners.setdefault(h, set()).add(p["key"])
    deduped = []
    for p in cleaned:
        seen, kept = set(), []
        for line in p["text"].split("\n"):
            h = _hash(line)
            if min(owners[h], key=_hash) != p["key"] or h in seen:
                continue
            seen.add(h)
            kept.append(line)
        text = "\n".join(kept)
        if text and len(_SENT.tokenize(text)) >= 3:
            deduped.append(dict(p, text=text))
    t["dedup"] = time.perf_counter() - s

    s = time.perf_counter()
    langdetect.DetectorFactory.seed = 0
    out = []
    for p in deduped:
        try:
            best = langdetect.detect_langs(p["text"])[0]
        except langdetect.lang_detect_exception.LangDetectException:
            continue
        if best.lang == "en" and best.prob >= 0.99:
            out.append(p)
    t["langdetect"] = time.perf_counter() - s
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    if urls_out:
        with open(urls_out, "w") as f:
            f.writelines(p["url"] + "\n" for p in out)
    print(json.dumps({
        "implementation": "python re-implementation of tfds c4_utils + langdetect (untrained punkt)",
        "pages_in": pages_in, "pages_out": len(out), "seconds": round(total, 2),
        "pages_per_second": round(pages_in / total, 1),
        "mb_per_second": round(stats["bytes"] / 1e6 / total, 2),
        "cpu_seconds": round(cpu, 2),
        "pages_per_cpu_second": round(pages_in / cpu, 1),
        "mb_per_cpu_second": round(stats["bytes"] / 1e6 / cpu, 2),
        "stage_seconds": {k: round(v, 2) for k, v in t.items()},
    }, indent=1))


if __name__ == "__main__":
    main()

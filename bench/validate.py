"""CDA validation benchmark: one command, prints a table.

    .venv/bin/python bench/validate.py [--kit DIR] [--cache-dir DIR] [--cold] [-n N]

Reports, for the official CR d'imagerie examples (N3 structured, N1 with embedded PDF):
* set-up: XSD load, and per Schematron profile how its XSLT was obtained (fresh compile through the
  3 ISO steps, or read from the on-disk cache) and the saxonche load (compile of the XSLT) time;
* warm per-document p50/p99 for lxml XSD, the CR d'imagerie Schematron on N3 and N1, structMin,
  the DMP pre-checks, and the whole `validate_cda` call.
Run it twice: the second run shows "cache" instead of "compiled" (restart reuses the XSLT).
`--cold` empties the cache directory first. Targets: CR d'imagerie < 40 ms p50, structMin < 300 ms p50.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.cda import ValidationKit, validate_cda  # noqa: E402
from engine.cda.kit import load_xsd  # noqa: E402
from engine.cda.saxon_runner import run_profile, saxon_document  # noqa: E402
from engine.xmlsafe import parse_untrusted  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "cda"
N3 = "IMG_CR_IMG_2024.01.xml"
N1 = "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml"
TARGETS = {"IMG-CR-IMG_2024.01": 40.0, "structMin": 300.0}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def timed(fn, runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def setup_table(kit: ValidationKit) -> list[tuple[str, str, float, float]]:
    started = time.perf_counter()
    load_xsd.cache_clear()
    kit.xsd()
    rows = [("xsd (CDA_extended.xsd)", "lxml", (time.perf_counter() - started) * 1000, 0.0)]
    for profile in kit.profiles:
        if kit.profile_path(profile) is None:
            continue
        loaded = kit.schematron(profile)
        compiled = kit.compiled(profile.name)
        how = "cache" if compiled.from_cache else "compiled"
        rows.append((profile.name, f"{how} ({len(compiled.xslt) / 1e6:.1f} MB)", compiled.elapsed_ms, loaded.load_ms))
    return rows


def measurements(kit: ValidationKit, examples: Path, runs: int) -> list[tuple[str, str, list[float]]]:
    profiles = {p.name: p for p in kit.profiles}
    docs = {name: (examples / name).read_bytes() for name in (N3, N1)}
    trees = {name: parse_untrusted(data) for name, data in docs.items()}
    saxon_docs = {name: saxon_document(data.decode("utf-8")) for name, data in docs.items()}
    schema = kit.xsd()

    def schematron(profile: str, doc: str):
        loaded = kit.schematron(profiles[profile])
        return lambda: run_profile(loaded, saxon_docs[doc], profile)

    return [
        ("XSD (lxml)", N3, timed(lambda: schema.validate(trees[N3]), runs * 4)),
        ("XSD (lxml)", N1, timed(lambda: schema.validate(trees[N1]), runs * 4)),
        ("IMG-CR-IMG_2024.01", N3, timed(schematron("IMG-CR-IMG_2024.01", N3), runs)),
        ("IMG-CR-IMG_2024.01", N1, timed(schematron("IMG-CR-IMG_2024.01", N1), runs)),
        ("structMin", N3, timed(schematron("structMin", N3), runs)),
        ("structMin", N1, timed(schematron("structMin", N1), runs)),
        ("IHE_XDS-SD", N1, timed(schematron("IHE_XDS-SD", N1), runs)),
        ("PFI-DMP-prechecks", N3, timed(schematron("PFI-DMP-prechecks", N3), runs)),
        ("validate_cda (all selected)", N3, timed(lambda: validate_cda(docs[N3], kit), runs)),
        ("validate_cda (all selected)", N1, timed(lambda: validate_cda(docs[N1], kit), runs)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kit", type=Path, default=CORPUS / "TestContenuCDA-3-0")
    parser.add_argument("--value-sets", type=Path, default=CORPUS / "derived" / "structMin-missing-voc")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "cache" / "schematron")
    parser.add_argument("--cold", action="store_true", help="empty the cache directory first")
    parser.add_argument("-n", "--runs", type=int, default=40, help="timed runs per Schematron case")
    args = parser.parse_args()
    if args.cold:
        shutil.rmtree(args.cache_dir, ignore_errors=True)
    kit = ValidationKit(args.kit, cache_dir=args.cache_dir, value_set_dirs=(args.value_sets,))

    print(f"cache: {args.cache_dir}")
    print(f"\n{'set-up':32} {'XSLT from':22} {'obtain ms':>10} {'saxon load ms':>14}")
    for name, how, obtain_ms, load_ms in setup_table(kit):
        print(f"{name:32} {how:22} {obtain_ms:10.1f} {load_ms:14.1f}")

    print(f"\n{'per document (warm)':32} {'document':42} {'runs':>5} {'p50 ms':>8} {'p99 ms':>8}  target")
    for name, doc, samples in measurements(kit, args.kit / "ExemplesCDA", args.runs):
        p50, p99 = percentiles(samples)
        target = TARGETS.get(name)
        verdict = "" if target is None else f"< {target:.0f} {'ok' if p50 < target else 'MISSED'}"
        print(f"{name:32} {doc:42} {len(samples):5} {p50:8.2f} {p99:8.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 1's colour study, measured on a GPU and saved for the book.

    DDPM_PROFILE=gpu python benchmarks/colour_study.py            # writes ddpm_core/data/colour_study.{json,npz}
    DDPM_PROFILE=gpu python benchmarks/colour_study.py --out /tmp/colour_study

Trains (or loads from the model cache) every model of ``compare.colour_study`` one at a time,
printing each one's training time, then scores them all (``compare.image_study``) and saves the
result (``ImageStudy.save``). On an H100 (2026-11-27) the twelve models of 1,000 updates took
237 s: DDPM 13 s per seed (24 s for the first, with the CUDA-graph capture), GAN 11 s, VAE 7 s and
the flow 44 s (launch-bound: ~900 small kernels per update); allow about two more minutes for the
scoring (sampling 800 images per model, the DDPM's bound over all 1,000 steps).
"""
import argparse
import time

from ddpm_core import compare, runtime, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(compare.COLOUR_STUDY_FILE),
                        help="where to write <out>.json and <out>.npz (default: the package's data folder)")
    args = parser.parse_args()
    if runtime.get_profile() != "gpu":
        print("note: not in the GPU profile (DDPM_PROFILE=gpu): the baselines get their CPU sizes")
    start = time.perf_counter()
    config = train.book_config("photo-crops")
    for seed in compare.IMAGE_SEEDS:
        t = time.perf_counter()
        train.get_trained(config.replace(seed=seed), progress=False)
        print(f"DDPM seed {seed}: {time.perf_counter() - t:.1f} s", flush=True)
    for seed in compare.IMAGE_SEEDS:
        for fam in ("gan", "vae", "flow"):
            t = time.perf_counter()
            compare.image_baselines(config, (fam,), seed, progress=False)
            print(f"{compare.FAMILY_NAMES[fam]} seed {seed}: {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    study = compare.colour_study(progress=False)
    print(f"scoring: {time.perf_counter() - t:.1f} s; in all {time.perf_counter() - start:.1f} s")
    print(compare.image_table(study.rows()).to_string())
    print(compare.seed_table(study.rows()).to_string())
    print("written:", study.save(args.out))


if __name__ == "__main__":
    main()

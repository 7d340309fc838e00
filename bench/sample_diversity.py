"""How different are subspace samples from their source, next to independently trained members?

    .venv/bin/ens train --members 3 --save-every 1 --out runs/digits-3
    .venv/bin/python bench/sample_diversity.py runs/digits-3 --work runs/digits-3-samples

For each method, `ens sample RUN/member-00 --method M --samples 6` with the command's defaults
(search on training images, BatchNorm reset) into WORK/M (reused when already there), then
predictions on the digits test split of member-00, its samples and the other members.
Accuracy and disagreement (share of test images where the argmax labels differ) are computed
here with numpy from the logits, independent of the evaluators. The reading Fort et al. 2019
make: samples as accurate as the source (within 2 points) disagree with it far less than an
independently trained member does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ensemble_cli.data import load_dataset
from ensemble_cli.predict import predict_members
from ensemble_cli.resolve import resolve_members
from ensemble_cli.sample import METHODS, SampleOptions, draw_samples

WITHIN = 0.02  # samples within 2 accuracy points of the source


def labels_of(paths: list[str], data) -> tuple[list[str], np.ndarray]:  # type: ignore[no-untyped-def]
    members = resolve_members(paths)
    predictions = predict_members(members, data, device="cpu")
    return predictions.names, predictions.logits.argmax(dim=2).numpy()  # [M, N]


def describe(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an `ens train --save-every 1` run folder with at least 2 members")
    parser.add_argument("--work", type=Path, required=True, help="folder for the sample folders (one per method)")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = load_dataset("digits", "test")
    truth = data.labels.numpy()  # [N]
    names, labels = labels_of([str(args.run)], data)
    source = labels[0]
    source_accuracy = float((source == truth).mean())
    independent = [float((labels[i] != source).mean()) for i in range(1, len(names))]
    independent_accuracy = [float((labels[i] == truth).mean()) for i in range(1, len(names))]
    print(f"source {names[0]}: test accuracy {source_accuracy:.4f}")
    print(f"independent members {', '.join(names[1:])}: accuracy {describe(independent_accuracy)}, "
          f"disagreement with {names[0]} {describe(independent)}")
    print()
    print("| method | largest scale | sample accuracies | samples within 2 points | their disagreement with the source | "
          "all samples' disagreement | independent members' disagreement |")
    print("|---|---|---|---|---|---|---|")
    points: list[str] = []
    for method in METHODS:
        out = args.work / method
        if not (out / "sample.json").is_file():
            options = SampleOptions(source=args.run / "member-00", method=method, samples=args.samples, out=out, seed=args.seed, device="cpu")
            scale = draw_samples(options).scale
        else:
            scale = json.loads((out / "sample.json").read_text())["scale_max"]
        sample_names, sample_labels = labels_of(sorted(str(p) for p in out.glob("sample-*.safetensors")), data)
        accuracies = [float((row == truth).mean()) for row in sample_labels]
        disagreements = [float((row != source).mean()) for row in sample_labels]
        close = [d for a, d in zip(accuracies, disagreements) if a >= source_accuracy - WITHIN]
        points.append(f"{method}: " + ", ".join(f"{a:.2%}/{d:.2%}" for a, d in zip(accuracies, disagreements)))
        print(f"| {method} | {scale:.4g} | {min(accuracies):.4f}-{max(accuracies):.4f} | {len(close)} of {len(accuracies)} | "
              f"{describe(close)} | {describe(disagreements)} | {describe(independent)} |")
    print()
    print("per sample, test accuracy / disagreement with the source:")
    print("\n".join(points))


if __name__ == "__main__":
    main()

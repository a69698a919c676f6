"""Write the sample instances in samples/: small images with fake patient data.

Run from the repository root, after scripts/start or scripts/test set up .venv:
.venv/bin/python scripts/make_samples.py
"""

from __future__ import annotations

from pathlib import Path

from capacitor.synthetic import make_image, write

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def main() -> None:
    for number in range(1, 4):
        dataset = make_image(study="sample-ct", series="ct-1", number=number, modality="CT")
        write(dataset, SAMPLES / f"ct-{number}.dcm")
    for number in range(1, 3):
        dataset = make_image(
            study="sample-mr",
            series="mr-1",
            number=number,
            modality="MR",
            patient_name="ROE^RICHARD",
            patient_id="FAKE0002",
        )
        write(dataset, SAMPLES / f"mr-{number}.dcm")
    print(f"wrote 5 sample instances to {SAMPLES}")


if __name__ == "__main__":
    main()

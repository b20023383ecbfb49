"""Make ``waves.npz`` for docs/examples/waveform.py from the Free Spoken Digit Dataset.

FSDD's official split (recordings 0-4 of each digit and speaker are the test set); every 8 kHz
clip is cut or zero-padded to 1 s (8,000 samples). Usage:
``python docs/examples/make_waves.py ../shared/data/fsdd-recordings.tar.gz waves.npz``
"""

import io
import re
import sys
import tarfile

import numpy as np
import soundfile as sf


def main(archive: str, out: str, samples: int = 8000) -> None:
    xs, ys = {"train": [], "test": []}, {"train": [], "test": []}
    with tarfile.open(archive) as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            hit = re.search(r"(\d)_([a-z]+)_(\d+)\.wav$", member.name)
            if hit is None:
                continue
            wave, rate = sf.read(io.BytesIO(tf.extractfile(member).read()), dtype="float32")
            split = "test" if int(hit[3]) < 5 else "train"
            xs[split].append(np.pad(wave[:samples], (0, max(0, samples - len(wave)))))
            ys[split].append(int(hit[1]))
    arrays = {f"x_{s}": np.stack(xs[s]) for s in xs} | {f"y_{s}": np.array(ys[s]) for s in ys}
    np.savez(out, **arrays)
    print(f"{out}: {len(ys['train'])} train and {len(ys['test'])} test waveforms")


if __name__ == "__main__":
    main(*sys.argv[1:3])

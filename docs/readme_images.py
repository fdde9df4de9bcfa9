"""The README's pictures of `avfusion predict`: docs/predict_plot.png (the plot) and
docs/predict_overlay.png (a frame of the overlay video), from a generated talking-face video.

    avfusion demo --clips 32 --frames 64 --epochs 6 --out /tmp/demo     # a small trained model
    python docs/readme_images.py --model /tmp/demo/runs/av/best --yunet pretrained/face_detection_yunet.onnx

The video: 8 s at 640x360, 25 fps, a drawn face (avfusion.synthetic.talking: no real person),
hidden behind a grey card from 2.0 to 3.0 s so that the plot shows a span without a face; the
voice is espeak-ng speaking three sentences with pauses between them (Silero VAD finds the
pauses: the spans without speech). Then, in effect:

    avfusion predict talk.mp4 --model MODEL --face-backend yunet --overlay

Without --yunet the whole frame is the face (no span without a face); without espeak-ng the
voice is the synthetic tone and speech detection is off.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

SECONDS, FPS, SR = 8.0, 25, 16000
HIDDEN = (2.0, 3.0)
SENTENCES = ((0.3, "I did not expect to see you here today."), (3.6, "That is wonderful news, really."),
             (6.3, "Let us go."))


def voice(tmp: Path):
    """espeak-ng's sentences placed at their start times in an 8 s 16 kHz track (None without it)."""
    import numpy as np

    from avfusion.data.audio import load_audio

    if shutil.which("espeak-ng") is None:
        return None
    track = np.zeros(int(SECONDS * SR), np.float32)
    for k, (start, text) in enumerate(SENTENCES):
        wav = tmp / f"s{k}.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
        said = load_audio(wav, SR)[: len(track) - int(start * SR)]
        track[int(start * SR) : int(start * SR) + len(said)] = 0.8 * said / max(1e-6, float(abs(said).max()))
    return track


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="a model name or save_pretrained folder (default: tiny)")
    p.add_argument("--yunet", help="the YuNet ONNX file (default: the whole frame is the face)")
    p.add_argument("--out", default="docs", help="folder for the two PNG files")
    p.add_argument("--frame", type=float, default=4.4, help="second of the overlay frame shown")
    args = p.parse_args()

    import av
    import numpy as np
    import torch
    from PIL import Image

    from avfusion.data.audio import load_audio
    from avfusion.data.video import VideoFile
    from avfusion.predict import Predictor
    from avfusion.synthetic.generator import mux_audio
    from avfusion.synthetic.talking import write_talking_video

    torch.manual_seed(0)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw, video = tmp / "raw.mp4", tmp / "talk.mp4"
        write_talking_video(raw, seconds=SECONDS, width=640, height=360, fps=FPS, seed=3)
        frames = VideoFile(raw).get_batch(list(range(int(SECONDS * FPS))))
        t = np.arange(len(frames)) / FPS
        frames[(t >= HIDDEN[0]) & (t < HIDDEN[1])] = 90
        sound = voice(tmp)
        speech = "auto" if sound is not None else "off"
        if sound is None:
            sound = load_audio(raw, SR)
        with av.open(str(video), "w") as c:
            vs = c.add_stream("libx264", rate=FPS)
            vs.width, vs.height, vs.pix_fmt = 640, 360, "yuv420p"
            ast = c.add_stream("aac", rate=SR)
            ast.layout = "mono"
            for k, f in enumerate(frames):
                fr = av.VideoFrame.from_ndarray(f, format="rgb24")
                fr.pts = k
                for pk in vs.encode(fr):
                    c.mux(pk)
            for pk in vs.encode():
                c.mux(pk)
            mux_audio(c, ast, sound.astype(np.float32), SR)
            for pk in ast.encode():
                c.mux(pk)
        predictor = Predictor(args.model, device="cpu", speech=speech,
                              **({"yunet_model": args.yunet} if args.yunet else {"face_backend": "full"}))
        predictor.predict_video(video, out_dir=tmp, plot=True, overlay=True)
        out.mkdir(parents=True, exist_ok=True)
        Image.open(tmp / "talk_va.png").convert("RGB").quantize(128).save(out / "predict_plot.png", optimize=True)
        with av.open(str(tmp / "talk_overlay.mp4")) as c:
            for k, f in enumerate(c.decode(video=0)):
                if k == int(round(args.frame * FPS)):
                    f.to_image().quantize(192).save(out / "predict_overlay.png", optimize=True)
                    break
    for name in ("predict_plot.png", "predict_overlay.png"):
        print(out / name, (out / name).stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main()

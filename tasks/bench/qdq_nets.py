"""ONNX QDQ benchmark networks: the float bench ONNX models quantised by onnxruntime's static quantiser.

QDQ (QuantizeLinear/DequantizeLinear pairs around each Conv and Gemm) is how ONNX carries int8 models; these
are written exactly as a user would make them, with `onnxruntime.quantization.quantize_static` (QDQ format,
int8 activations, int8 symmetric weights per channel, MinMax calibration on seeded inputs), from the float
``mlp.onnx`` and ``convnet.onnx`` of tasks/bench/models.py. crtforge runs their Conv and Gemm on its own int8
kernels with onnxruntime's requantisation (tasks/compile/quantize.py `onnxruntime_channel_quant`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from tasks import fsutil

NETWORKS: dict[str, str] = {"mlp_qdq": "mlp.onnx", "convnet_qdq": "convnet.onnx"}  # QDQ model: float source
CALIBRATION_SAMPLES: int = 16


def _calibration(source: Path, seed: int):
    """A CalibrationDataReader of seeded inputs for the model's one input (the bench models' input range)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    graph = onnx.load(str(source), load_external_data=False).graph
    x = graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    rng = np.random.default_rng((seed, 2))
    samples = [{x.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(CALIBRATION_SAMPLES)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    return Reader()


def quantize_qdq(source: Path, dest: Path, seed: int = 0, uint8_activations: bool = False) -> None:
    """`source` (float ONNX) quantised to QDQ at `dest`, written atomically. `uint8_activations`: the
    quantiser's other activation type, which the int8 kernels do not take (tests of the fallback)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice to pre-process is not for us
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        quantize_static(str(source), str(out), _calibration(source, seed), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8 if uint8_activations else QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
        fsutil.write_bytes(Path(dest), out.read_bytes())


def write_all_qdq(float_dir: Path, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write mlp_qdq.onnx and convnet_qdq.onnx into `out_dir` from the float models in `float_dir`."""
    paths = {}
    for name, source in NETWORKS.items():
        paths[name] = Path(out_dir) / f"{name}.onnx"
        quantize_qdq(Path(float_dir) / source, paths[name], seed)
    return paths

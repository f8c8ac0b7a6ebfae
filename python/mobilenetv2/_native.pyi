"""Type stubs of the native module (crates/mnv2-py); import ``mobilenetv2``, not this."""

import os
from typing import Any, List, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

class Error(ValueError):
    """A failure of the engine or of its input, with the library's one-line message."""

class Prediction(TypedDict):
    index: int
    label: Optional[str]
    prob: float

class Classification(TypedDict):
    image: Optional[str]
    top: List[Prediction]

PathLike = Union[str, "os.PathLike[str]"]
# A path, encoded JPEG/PNG bytes, a PIL image or an HxWx3 uint8 array.
ImageLike = Union[PathLike, bytes, bytearray, npt.NDArray[np.uint8], Any]

class Model:
    """MobileNetV2 weights compiled for inference (immutable, thread-safe)."""

    @staticmethod
    def load(
        path: PathLike, threads: Optional[int] = None, mode: str = "fast", precision: Optional[str] = None
    ) -> "Model": ...
    @staticmethod
    def init(
        width: float = 1.0,
        resolution: Union[int, str, None] = None,
        classes: int = 1000,
        seed: int = 0,
        threads: Optional[int] = None,
        mode: str = "fast",
        precision: Optional[str] = None,
    ) -> "Model": ...
    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def classify(
        self, images: Union[ImageLike, Sequence[ImageLike]], top: int = 5
    ) -> List[Classification]: ...
    def quantize(
        self,
        calib: Union[PathLike, Sequence[PathLike], npt.NDArray[np.float32]],
        method: str = "percentile:99.9",
        images: int = 100,
    ) -> "Model": ...
    def save(self, path: PathLike, dtype: str = "f32") -> None: ...
    def export(
        self,
        path: PathLike,
        format: str = "onnx",
        dynamic_batch: bool = False,
        opset: Optional[int] = None,
        resolution: Union[int, str, None] = None,
    ) -> None: ...
    @property
    def input_size(self) -> Tuple[int, int]: ...
    @property
    def classes(self) -> int: ...
    @property
    def width(self) -> float: ...
    @property
    def labels(self) -> Optional[List[str]]: ...
    @property
    def quantized(self) -> bool: ...
    @property
    def threads(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def source(self) -> str: ...

# "class" (the 0-based foreground class) is a keyword, hence the functional form.
Detection = TypedDict("Detection", {"box": List[float], "score": float, "class": int, "label": str})

class Detections(TypedDict):
    image: Optional[str]
    size: List[int]
    detections: List[Detection]

class Detector:
    """An SSDLite/SSD detector from a TF Object Detection API frozen graph or its safetensors conversion (thread-safe)."""

    @staticmethod
    def load(
        path: PathLike, threshold: float = 0.5, threads: Optional[int] = None, precision: Optional[str] = None
    ) -> "Detector": ...
    def detect(self, images: Union[ImageLike, Sequence[ImageLike]]) -> List[Detections]: ...
    @property
    def threshold(self) -> float: ...
    @property
    def input_size(self) -> Tuple[int, int]: ...

# "label" is absent for a class without a name.
ClassFraction = TypedDict("ClassFraction", {"class": int, "label": str, "fraction": float}, total=False)

class Segmentation(TypedDict):
    image: Optional[str]
    width: int
    height: int
    mask: npt.NDArray[np.uint8]
    classes: List[ClassFraction]

class Segmenter:
    """A Mobile DeepLabv3 segmenter (MobileNetV2 backbone, DeepLab head; thread-safe)."""

    @staticmethod
    def load(path: PathLike, threads: Optional[int] = None, precision: Optional[str] = None) -> "Segmenter": ...
    def segment(
        self, images: Union[ImageLike, Sequence[ImageLike]], multi_scale: bool = False
    ) -> List[Segmentation]: ...
    @property
    def classes(self) -> int: ...

from ._native import Classification as Classification
from ._native import Detection as Detection
from ._native import Detector as Detector
from ._native import Detections as Detections
from ._native import Error as Error
from ._native import Model as Model
from ._native import Prediction as Prediction
from ._native import Segmentation as Segmentation
from ._native import Segmenter as Segmenter
from ._native import __version__ as __version__

__all__ = ["Detector", "Error", "Model", "Segmenter", "__version__"]

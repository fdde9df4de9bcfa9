"""Evaluation: one window -> frame collector (:mod:`.collect`) and the metrics, tables and files
computed from its result (:mod:`.report`)."""
from .collect import PredictionCollector, VideoPrediction, batch_rows, predict_loader, smooth_predictions
from .run import default_eval_dir, evaluate_model
from .report import compute_metrics, evaluate, format_report, predictions_frame, split_metrics, write_results

__all__ = ["PredictionCollector", "VideoPrediction", "batch_rows", "predict_loader", "smooth_predictions",
           "compute_metrics", "evaluate", "format_report", "predictions_frame", "split_metrics", "write_results",
           "evaluate_model", "default_eval_dir"]

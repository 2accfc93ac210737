"""Engineering quantities from predicted surface fields: integrated forces, drag and lift
coefficients, and their errors over a test set (pure torch and torchmetrics, no Lightning)."""

from flare_lightning.forces.coefficients import drag_and_lift, force_coefficients, surface_force
from flare_lightning.forces.metrics import ForceCoefficientErrors, force_report

__all__ = ["ForceCoefficientErrors", "drag_and_lift", "force_coefficients", "force_report", "surface_force"]

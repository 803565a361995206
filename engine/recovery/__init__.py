"""Recovery after compression: distillation from the original model ("heal"), LoRA or full fine-tuning."""
from .heal import RecoveryReport, recover, recover_result, recovery_text
from .losses import hidden_loss, kl_loss

__all__ = ["RecoveryReport", "recover", "recover_result", "recovery_text", "kl_loss", "hidden_loss"]

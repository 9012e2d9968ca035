"""Verification: answer extraction, verifiers, the time-limited sandboxed pool, the stage and the judge."""

"""The verifier service: owns the target model and decides what is accepted (pipeline issue)."""

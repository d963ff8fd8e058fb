"""The registry stage, on MLflow: tracking runs (`tracking`), registering a checkpoint behind the gated
alias (`register`, `gate`: who holds the alias), pulling weights or predictions back (`sources`,
`predict`) and the registered model itself (`pyfunc`). Nothing here imports Ray, and `pyfunc` loads
where only mlflow and torch are installed."""

"""Running more at once: folds in parallel (`parallel`), as Ray tasks (`workers`), and a team's
MLflow tracking server (`server`)."""

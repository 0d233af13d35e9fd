"""The data step: sources (each competition's layout and submission format), the split into
folds grouped by subject and near-duplicates, and the decoded, memory-mapped image cache."""

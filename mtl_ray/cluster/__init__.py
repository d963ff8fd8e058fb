"""Where runs execute: joining or starting Ray (`runtime`), sizing workers on the cluster
(`resources`) and submitting commands as Ray jobs (`submit`)."""

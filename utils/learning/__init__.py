"""Fine-tuning over active-learning rounds: the settings
(``train_options``), the fixed split and its pipelines (``data_split``,
``training_data``), the rounds (``training``) with their state and files
(``run_state``, ``run_files``), the two ways a round fits (``learners``,
``embeddings``), the pool used without labels (``pseudo_labels``,
``fixmatch``), the choice of tiles to label (``active_learning``, ``queries``),
the scores and what the run prints (``evaluation``, ``round_report``), the
source model's steps before any label (``source_model``), ``--repeats``
(``repeats``) and self-supervised pretraining (``pretraining``). It may import
every earlier stage: ``common``, ``slides``, ``tiles`` and ``network``."""

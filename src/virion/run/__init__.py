"""The run folder: its layout, its versioned metadata schema, the only readers/writers of its files
and the only model loader. Low in the house (beside data/ and models/) so every later stage can use it.

- `virion.run.layout`: file and folder names, creating/checking run folders, listing model folders.
- `virion.run.schema`: `ModelMetadata`, `DatasetInfo` (versioned dataclasses), `parse_stretch`.
- `virion.run.store`: atomic JSON/text writers and readers of config/dataset/metadata/skipped files.
- `virion.run.loading`: `find_model_file`, `load_keras_model` (safe mode), `load_models`.
- `virion.run.splits`: a run's dataset and decode settings rebuilt from its config (train and evaluate).
"""

"""Data: the offline dataset, Inception preprocessing and the input pipelines.

The public API is in `input_pipeline` (DatasetInfo, get_dataset_info,
create_train_iterator, create_eval_iterator). Only this package imports
tensorflow_datasets.
"""

"""What runs next to TF Serving: the model server launcher (server), the batch client (client), deployment files.

    python -m serving.server --model_config_file=out/serving/models.config      # gRPC :8500, REST :8501
    python -m serving.client photos/ --output_dir out/colorized --server localhost:8500
"""

"""Every flag of the scripts and every field of metadata.json and config.json a user might edit,
each given a value it cannot take: the table `test_hostile_input` runs (issue 33).

A case: `(script, arguments, exit code, what the message must say, edit)`, the placeholders of
`test_hostile_input.CASES` ({data}, {run}, {tmp}...; {text} the small corpus), and `edit` one of
`("metadata", {field: value})`: a copy of the valid split at {tmp}/meta with those fields, or
`("config", {"section.field": value})`: the run's config.json with those fields (DELETE removes
one), or `("config_text", text)`: that text as its config.json.
`test_every_flag_and_field_has_a_case` holds the table to every flag and field.

Flags that absl parses into a closed set (booleans, enums, bounded integers) are refused by absl
itself, naming the flag ("FATAL Flags parsing error: flag --x=...", exit 1): one case per kind
shows it. config.json values go through the same checks as the flags (`ModelConfig.validate`,
`TrainConfig.validate`), after a check of their JSON types, which flags cannot get wrong.
"""

DELETE = object()
INT_MAX = 2**31 - 1

# The short run's training flags (test_training.train_args), with placeholders; one step at
# most, should a case not be refused.
TRAIN = ("--train_directory={data}/tf/train", "--valid_directory={data}/tf/valid",
         "--test_directory={data}/tf/test", "--sp_model_prefix={data}/sp", "--preset=tiny",
         "--cutoffs=20", "--cutoffs=80", "--epochs=1", "--max_steps=1", "--warmup_steps=10",
         "--max_lr=3e-3", "--log_every=10", "--log_dir={tmp}/runs",
         "--model_name=fresh")  # fmt: skip
EVALUATE = ("--mode=evaluate", "--checkpoint_dir={run}/checkpoints")
GENERATE = ("--checkpoint_dir={run}/checkpoints",)
BUILD = ("--input_text={text}", "--tfrecords_directory={tmp}/tf", "--sp_model_prefix={tmp}/sp")
CUTS = ("--filename={data}/tf/train/unigram.txt",)
PLOT = ("--run_dir={run}",)
META = ("--train_directory={data}/tf/train", "--valid_directory={tmp}/meta", *TRAIN[2:])


def train(name, value, message, code=2):
    return ("train.py", (*TRAIN, f"--{name}={value}"), code, message)


def generate(name, value, message, code=2):
    return ("generate.py", (*GENERATE, f"--{name}={value}"), code, message)


def build(name, value, message):
    return ("build_data.py", (*BUILD, f"--{name}={value}"), 1, message)


def corpus(name, value, message):
    """build_data.py on a corpus of files: the small corpus's three text files."""
    return ("build_data.py", ("--input_files={text}/*.txt", *BUILD[1:], f"--{name}={value}"), 1,
            message)  # fmt: skip


def cuts(name, value, message):
    return ("optimal_cuts.py", (*CUTS, f"--{name}={value}"), 1, message)


def metadata(field, value, message):
    return ("train.py", META, 2, ("{tmp}/meta/metadata.json", message),
            ("metadata", {field: value}))  # fmt: skip


def config(field, value, message):
    damaged = "{run}/checkpoints/config.json is damaged or edited"
    return ("generate.py", GENERATE, 2, (damaged, message), ("config", {field: value}))


FLAG_CASES = {
    # train.py: the data.
    "train_directory_empty": train("train_directory", "", "--train_directory is required"),
    "train_directory_missing": train(
        "train_directory", "{tmp}/nothing", "{tmp}/nothing/metadata.json does not exist"),
    "valid_directory_of_other_data": train(
        "valid_directory", "{other}/bpe/valid",
        "--valid_directory={other}/bpe/valid has sp_model_sha256="),
    "test_directory_missing": train(
        "test_directory", "{tmp}/nothing", "{tmp}/nothing/metadata.json does not exist"),
    "sp_model_prefix_missing": train(
        "sp_model_prefix", "{tmp}/nothing",
        ("--sp_model_prefix: {tmp}/nothing.model does not exist; expected <prefix>.model, the "
         "SentencePiece model the data was built with ({data}/sp.model)")),
    # train.py: the model.
    "d_model_zero": train("d_model", 0, "--d_model must be positive, received 0."),
    "d_model_odd": train("d_model", 33, "--num_heads=2 must divide d_model=33"),
    "d_model_not_an_integer": train(
        "d_model", "x", "flag --d_model=x: invalid literal for int()", code=1),
    "d_model_too_large": train(
        "d_model", 2**31, f"--d_model must be at most {INT_MAX}, received {2**31}."),
    "num_heads_zero": train("num_heads", 0, "--num_heads must be positive, received 0."),
    "d_ffn_negative": train("d_ffn", -1, "--d_ffn must be positive, received -1."),
    "num_layers_zero": train("num_layers", 0, "--num_layers must be positive, received 0."),
    "mem_len_negative": train("mem_len", -1, "--mem_len must be >= 0, received -1."),
    "window_zero": train(
        "window", 0, "--window must be a positive integer (default: the segment length), "
        "received 0."),
    "dropout_rate_nan": train(
        "dropout_rate", "nan", "--dropout_rate must be a finite number, received nan."),
    "dropout_rate_one": train("dropout_rate", 1, "--dropout_rate must be in [0, 1), received 1.0"),
    "attention_dropout_rate_negative": train(
        "attention_dropout_rate", -0.1, "--attention_dropout_rate must be in [0, 1)"),
    "cutoffs_negative": train(
        "cutoffs", -5, "--cutoffs must be strictly increasing and between 0 and the vocabulary "
        "size 400 (exclusive), received [20, 80, -5]."),
    "proj_factor_zero": train("proj_factor", 0, "--proj_factor must be positive, received 0."),
    "choices_unknown_letter": train(
        "choices", "AX", "--choices must be 2 or more distinct letters"),
    "architecture_too_short": train("architecture", "AA", "--architecture must be 3 letters"),
    "architecture_unknown_letter": train("architecture", "AAX", "--architecture must be"),
    "initializer_range_infinite": train(
        "initializer_range", "inf", "--initializer_range must be a finite number, received inf."),
    "initializer_range_zero": train(
        "initializer_range", 0, "--initializer_range must be positive, received 0.0."),
    "knn_layers_beyond_the_blocks": train(
        "knn_layers", 7, "--knn_layers must be distinct block indices in [0, 3), received [7]."),
    "knn_memory_size_zero": train(
        "knn_memory_size", 0, "--knn_memory_size must be a positive integer, received 0."),
    "knn_neighbors_above_memory_size": (
        "train.py", (*TRAIN, "--knn_layers=1", "--knn_memory_size=8", "--knn_neighbors=16"), 2,
        "--knn_memory_size must be at least knn_neighbors=16, received 8."),
    "recurrent_states_zero": train(
        "recurrent_states", 0, "--recurrent_states must be a positive integer, received 0."),
    "recurrent_block_size_negative": train(
        "recurrent_block_size", -4,
        "--recurrent_block_size must be a positive integer, received -4."),
    "enum_flag_unknown_value": train(
        "search", "random", "flag --search=random: value should be one of", code=1),
    "bool_flag_not_a_bool": train(
        "tie_embeddings", "maybe", "flag --tie_embeddings=maybe: ('Non-boolean argument", code=1),
    # train.py: the schedule, optimizer, loop.
    "max_lr_infinite": train("max_lr", "inf", "--max_lr must be a finite number, received inf."),
    "max_lr_zero": train("max_lr", 0, "--max_lr must be positive, received 0.0."),
    "warmup_steps_negative": train("warmup_steps", -1, "--warmup_steps must be >= 0, received -1."),
    "warmup_steps_too_large": train(
        "warmup_steps", 2**40, f"--warmup_steps must be at most {INT_MAX}"),
    "tau_start_zero": train("tau_start", 0, "--tau_start must be positive, received 0.0."),
    "tau_end_nan": train("tau_end", "nan", "--tau_end must be a finite number, received nan."),
    "epochs_zero": train("epochs", 0, "--epochs must be positive, received 0."),
    "epochs_too_large": train("epochs", 2**63, f"--epochs must be at most {INT_MAX}"),
    "max_steps_negative": train("max_steps", -1, "--max_steps must be >= 0, received -1."),
    "eval_every_negative": train("eval_every", -1, "--eval_every must be >= 0, received -1."),
    "eval_steps_zero": train("eval_steps", 0, "--eval_steps must be positive steps, received (0,)"),
    "checkpoint_every_zero": train(
        "checkpoint_every", 0, "--checkpoint_every must be positive, received 0."),
    "log_every_zero": train("log_every", 0, "--log_every must be positive, received 0."),
    "steps_per_execution_too_large": train(
        "steps_per_execution", 2**31, f"--steps_per_execution must be at most {INT_MAX}"),
    "seed_negative": train("seed", -1, "--seed must be in [0, 2**32), received -1."),
    "seed_too_large": train("seed", 2**32, "--seed must be in [0, 2**32), received 4294967296."),
    "divergence_factor_infinite": train(
        "divergence_factor", "inf", "--divergence_factor must be a finite number, received inf."),
    "model_name_empty": (
        "train.py", (*TRAIN[:-1], "--model_name="), 2, "--model_name must not be empty."),
    "checkpoint_dir_is_a_file": train(
        "checkpoint_dir", "{tmp}/a_file", "--checkpoint_dir: cannot create {tmp}/a_file"),
    "strategy_without_its_cluster": train(
        "strategy", "multi_worker", "--strategy=multi_worker reads the cluster from the TF_CONFIG"),
    "tpu_without_strategy_tpu": train(
        "tpu", "local", "--tpu=local is used only with --strategy=tpu, received "
        "--strategy=default."),
    "allow_changed_training_flags_without_resume": (
        "train.py", (*TRAIN, "--allow_changed_training_flags"), 2,
        "--allow_changed_training_flags is used only with --resume"),
    "checkpoint_when_training": train(
        "checkpoint", "{run}/checkpoints/ckpt-00000020.weights.h5",
        "--checkpoint is used only with --mode=evaluate"),
    "eval_directory_when_training": train(
        "eval_directory", "{data}/tf/test", "--eval_directory is used only with --mode=evaluate"),
    # train.py: the search's flags (validated by TrainConfig._validate_search).
    "arch_lr_zero": train("arch_lr", 0, "--arch_lr must be positive, received 0.0."),
    "arch_lr_infinite": train("arch_lr", "inf", "--arch_lr must be a finite number, received inf."),
    "arch_beta_1_one": train("arch_beta_1", 1, "--arch_beta_1 must be in [0, 1), received 1.0."),
    "arch_weight_decay_negative": train(
        "arch_weight_decay", -1, "--arch_weight_decay must be >= 0, received -1.0."),
    "arch_start_step_negative": train(
        "arch_start_step", -1, "--arch_start_step must be >= 0, received -1."),
    "arch_fraction_one": train(
        "arch_fraction", 1, "--arch_fraction must be in [0, 1), received 1.0"),
    "arch_fraction_without_arch_optimizer": (
        "train.py", (*TRAIN, "--arch_fraction=0.2", "--arch_optimizer=none"), 2,
        "--arch_fraction=0.2 needs an --arch_optimizer"),
    "cost_weight_nan": train("cost_weight", "nan", "--cost_weight must be a finite number"),
    "cost_target_zero": train("cost_target", 0, "--cost_target must be positive, received 0.0."),
    "latency_table_missing": (
        "train.py", (*TRAIN, "--cost=latency", "--latency_table={tmp}/nothing.json"), 2,
        "--latency_table={tmp}/nothing.json: cannot read it"),
    # train.py --mode=evaluate.
    "evaluate_eval_directory_missing": (
        "train.py", (*EVALUATE, "--eval_directory={tmp}/nothing"), 2,
        "{tmp}/nothing/metadata.json does not exist"),
    "evaluate_checkpoint_not_a_checkpoint": (
        "train.py", (*EVALUATE, "--checkpoint={tmp}/a_file"), 2,
        "--checkpoint={tmp}/a_file is not a checkpoint: expected a ckpt-<step>.weights.h5 file"),
    # generate.py.
    "generate_checkpoint_dir_empty": (
        "generate.py", ("--checkpoint_dir=",), 2, "--checkpoint_dir is required."),
    "generate_checkpoint_dir_missing": (
        "generate.py", ("--checkpoint_dir={tmp}/nothing",), 2,
        "--checkpoint_dir: {tmp}/nothing/config.json does not exist"),
    "generate_checkpoint_missing": generate(
        "checkpoint", "{tmp}/nothing.weights.h5", "--checkpoint: {tmp}/nothing.weights.h5 does "
        "not exist."),
    "generate_sp_model_prefix_missing": generate(
        "sp_model_prefix", "{tmp}/nothing", "--sp_model_prefix: {tmp}/nothing.model does not "
        "exist; expected <prefix>.model, the SentencePiece model the run was trained with"),
    "generate_num_tokens_too_large": generate(
        "num_tokens", 2**31, f"--num_tokens must be at most {INT_MAX}, received {2**31}."),
    "generate_temperature_infinite": generate(
        "temperature", "inf", "--temperature must be positive and finite, received inf."),
    "generate_top_k_too_large": generate("top_k", 2**40, f"--top_k must be at most {INT_MAX}"),
    "generate_top_p_nan": generate("top_p", "nan", "--top_p must be in (0, 1], received nan."),
    "generate_top_p_above_one": generate("top_p", 1.5, "--top_p must be in (0, 1], received 1.5."),
    "generate_seed_negative": generate("seed", -1, "--seed must be in [0, 2**32), received -1."),
    "generate_enum_flag_unknown_value": generate(
        "knn_backend", "faiss", "flag --knn_backend=faiss: value should be one of", code=1),
    # build_data.py.
    "build_input_text_empty": build("input_text", "", "--input_text is required"),
    "build_tfrecords_directory_is_a_file": build(
        "tfrecords_directory", "{tmp}/a_file", "cannot create {tmp}/a_file/train "
        "(--tfrecords_directory={tmp}/a_file): Not a directory"),
    "build_sp_model_prefix_empty": build("sp_model_prefix", "", "--sp_model_prefix is required"),
    "build_vocab_size_too_large": build(
        "vocab_size", 2**31, f"--vocab_size={2**31}: expected a positive integer up to {INT_MAX}"),
    "build_batch_size_zero": build("batch_size", 0, "--batch_size=0: expected a positive integer"),
    "build_seq_len_negative": build("seq_len", -1, "--seq_len=-1: expected a positive integer"),
    "build_shards_zero": build("shards", 0, "--shards=0: expected a positive integer"),
    "build_num_threads_too_many": build(
        "num_threads", 2000, "--num_threads=2000: expected a positive count up to 1024"),
    "build_unk_marker_two_words": build(
        "unk_marker", "a b", "--unk_marker='a b': expected one word"),
    "build_document_start_not_a_pattern": build(
        "document_start", "(", "--document_start='(' is not a valid regular expression"),
    "build_sp_model_missing": build(
        "sp_model", "{tmp}/nothing.model", "--sp_model={tmp}/nothing.model does not exist"),
    "build_bool_flag_not_a_bool": (
        "build_data.py", (*BUILD, "--lowercase=maybe"), 1,
        "flag --lowercase=maybe: ('Non-boolean argument"),
    "build_enum_flag_unknown_value": build(
        "model_type", "word", "flag --model_type=word: value should be one of"),
    "build_input_files_no_match": (
        "build_data.py", ("--input_files={tmp}/nothing/*.py", *BUILD[1:]), 1,
        "--input_files='{tmp}/nothing/*.py' names no file"),
    "build_valid_fraction_above_one": corpus(
        "valid_fraction", 1.5, "--valid_fraction=1.5: expected a fraction in (0, 1)"),
    "build_test_fraction_zero": corpus(
        "test_fraction", 0, "--test_fraction=0.0: expected a fraction in (0, 1)"),
    "build_corpus_directory_holds_a_corpus": corpus(
        "corpus_directory", "{text}", "{text} already holds train.txt, valid.txt, test.txt; "
        "pass --overwrite"),
    # optimal_cuts.py.
    "cuts_filename_missing": (
        "optimal_cuts.py", ("--filename={tmp}/nothing.txt",), 1,
        "{tmp}/nothing.txt: cannot read the unigram file"),
    "cuts_clusters_zero": cuts("clusters", 0, "flag --clusters=0: 0 is not a positive integer"),
    "cuts_clusters_above_the_vocabulary": cuts(
        "clusters", 500, "--clusters=500: {data}/tf/train/unigram.txt has 400 entries, so at most "
        "400 clusters."),
    "cuts_d_model_zero": cuts("d_model", 0, "--d_model must be an integer >= 1, received 0."),
    "cuts_proj_factor_zero": cuts(
        "proj_factor", 0, "--proj_factor must be an integer >= 1, received 0."),
    "cuts_batch_tokens_nan": cuts(
        "batch_tokens", "nan", "--batch_tokens must be a positive number, received nan."),
    "cuts_c_us_infinite": cuts("c_us", "inf", "--c_us must be a number >= 0, received inf."),
    "cuts_tflops_zero": cuts("tflops", 0, "--tflops must be a positive number, received 0.0."),
    "cuts_k0_negative": cuts("k0", -1, "--k0 must be a number >= 0, received -1.0."),
    "cuts_b0_nan": cuts("b0", "nan", "--b0 must be a number >= 0, received nan."),
    # plot_search.py.
    "plot_run_dir_missing": (
        "plot_search.py", ("--run_dir={tmp}/nothing",), 2,
        "--run_dir={tmp}/nothing is not a directory; expected a run directory of train.py"),
    "plot_run_dir_without_a_search": (
        "plot_search.py", ("--run_dir={tmp}",), 2, "holds no architecture search history"),
    "plot_output_dir_is_a_file": (
        "plot_search.py", (*PLOT, "--output_dir={tmp}/a_file"), 2,
        "--output_dir={tmp}/a_file: cannot write search.png and search.gif there: File exists"),
    "plot_output_dir_under_a_file": (
        "plot_search.py", (*PLOT, "--output_dir={tmp}/a_file/pictures"), 2,
        "--output_dir={tmp}/a_file/pictures: cannot write search.png and search.gif there: Not a "
        "directory"),
    "plot_frames_zero": (
        "plot_search.py", (*PLOT, "--frames=0"), 1, "flag --frames=0: 0 is not a positive integer"),
    # metadata.json, each field (read by train.py: the valid split).
    "metadata_format_version": metadata(
        "format_version", 1, "format_version=1, this version of par-xl reads format_version=2"),
    "metadata_split": metadata("split", "dev", "split='dev' must be one of ('train', 'valid', "),
    "metadata_vocab_size_zero": metadata(
        "vocab_size", 0, "vocab_size=0 must be a positive integer"),
    "metadata_vocab_size_a_string": metadata(
        "vocab_size", "400", "vocab_size='400' is not of type int"),
    "metadata_batch_size_negative": metadata(
        "batch_size", -4, "batch_size=-4 must be a positive integer"),
    "metadata_seq_len_too_large": metadata(
        "seq_len", 2**31, f"seq_len={2**31} must be at most {INT_MAX}"),
    "metadata_steps_zero": metadata("steps", 0, "steps=0 must be a positive integer"),
    "metadata_num_tokens_negative": metadata(
        "num_tokens", -1, "num_tokens=-1 must be an integer >= 0"),
    "metadata_tokens_used": metadata(
        "tokens_used", 5, "tokens_used=5 is not steps * batch_size * seq_len"),
    "metadata_tokens_dropped": metadata(
        "tokens_dropped", 5, "tokens_dropped=5 is not num_tokens - 1 - tokens_used"),
    "metadata_num_words_a_float": metadata(
        "num_words", 12.5, "num_words=12.5 is not of type int"),
    "metadata_words_used_zero": metadata(
        "words_used", 0, "words_used=0 must be a positive integer"),
    "metadata_characters_used_zero": metadata(
        "characters_used", 0, "characters_used=0 must be a positive integer"),
    "metadata_documents_negative": metadata(
        "documents", -1, "documents=-1 must be an integer >= 0"),
    "metadata_bytes_used_negative": metadata(
        "bytes_used", -1, "bytes_used=-1 must be an integer >= 0"),
    "metadata_corpus_a_string": metadata("corpus", "stdlib", "corpus='stdlib' is not of type dict"),
    "metadata_document_start": metadata(
        "document_start", "(", "document_start='(' must be a regular expression"),
    "metadata_lowercase": metadata("lowercase", "yes", "lowercase='yes' is not of type bool"),
    "metadata_model_type": metadata(
        "model_type", "word", "model_type='word' must be one of ('unigram', 'bpe')"),
    "metadata_unk_marker": metadata("unk_marker", 5, "unk_marker=5 is not of type str"),
    "metadata_byte_fallback": metadata(
        "byte_fallback", None, "byte_fallback=None is not of type bool"),
    "metadata_sp_model": metadata("sp_model", 5, "sp_model=5 is not of type str"),
    "metadata_sp_model_sha256": metadata(
        "sp_model_sha256", "abc", "sp_model_sha256='abc' must be 64 hexadecimal digits"),
    "metadata_shards_outside_the_split": metadata(
        "shards", [{"file": "../train/train-00000-of-00004.tfrecord", "batches": 122,
                    "bytes": 1, "sha256": "0" * 64}],
        "shards must be a list of objects with the keys file, batches, bytes, sha256"),
    "metadata_shards_batches_a_string": metadata(
        "shards", [{"file": "valid-00000-of-00001.tfrecord", "batches": "122", "bytes": 1,
                    "sha256": "0" * 64}], "received {{'file': 'valid-00000-of-00001.tfrecord', "
        "'batches': '122'"),
    "metadata_source": metadata("source", None, "source=None is not of type str"),
    "metadata_missing_field": metadata("seq_len", DELETE, "lacks the keys seq_len"),
    # config.json: the JSON types flags cannot get wrong, then the flags' own checks.
    "config_not_json": ("generate.py", GENERATE, 2, (
        "{run}/checkpoints/config.json is damaged or edited (JSONDecodeError: Expecting value"),
        ("config_text", "not JSON")),
    "config_section_missing": config("model", DELETE, "KeyError: 'model'"),
    "config_integer_as_a_string": config(
        "model.d_model", "32", "--d_model must be an integer, received '32'."),
    "config_bool_as_an_integer": config(
        "model.tie_embeddings", 1, "--tie_embeddings must be true or false, received 1."),
    "config_float_nan": config(
        "model.dropout_rate", float("nan"), "--dropout_rate must be a finite number, received nan"),
    "config_float_infinite": config(
        "train.max_lr", float("inf"), "--max_lr must be a finite number, received inf."),
    "config_string_as_a_number": config(
        "train.opt_name", 5, "--opt_name must be a string, received 5."),
    "config_optional_string": config(
        "train.test_directory", 5, "--test_directory must be a string or null, received 5."),
    "config_list_of_integers": config(
        "train.eval_steps", ["x"], "--eval_steps must be a list of integers, received ('x',)."),
    "config_cutoffs_out_of_order": config(
        "model.cutoffs", [80, 20], "--cutoffs must be strictly increasing"),
    "config_epochs_zero": config("train.epochs", 0, "--epochs must be positive, received 0."),
    "config_search_flag": config(
        "train.arch_fraction", 2.0, "--arch_fraction must be in [0, 1), received 2.0."),
    "config_unknown_field": config(
        "model.width", 32, "TypeError: ModelConfig.__init__() got an unexpected keyword"),
    "config_data_batch_size": config(
        "data.train.batch_size", 0, "data.train.batch_size must be positive, received 0."),
    "config_data_sha256_a_number": config(
        "data.train.sp_model_sha256", 5, "data.train.sp_model_sha256 must be a string, received 5"),
    "config_data_missing_field": config(
        "data.train.seq_len", DELETE, "data.train lacks seq_len."),
    "config_run_id": config(
        "run.id", 5, "run must hold the strings id, name and checkpoint_dir"),
}  # fmt: skip

# Flags whose every value works, or that absl parses into a closed set (see the docstring).
ANY_VALUE = {
    "generate.py": {"prompt": "any text, the empty prompt included"},
}

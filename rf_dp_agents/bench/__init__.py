"""Measurement code behind the benchmark and GPU-check scripts (each script is a thin command line over it).

- :mod:`~rf_dp_agents.bench.timing`: timing helpers and the seed-config policy the rows build
- :mod:`~rf_dp_agents.bench.settings`: the settings of ``scripts/benchmark.py``
- :mod:`~rf_dp_agents.bench.trainer_rows`: the trainer end to end per setting, the speed levers, a step profile
- :mod:`~rf_dp_agents.bench.peers`: the plain eager DataLoader step and lerobot's DiffusionPolicy
- :mod:`~rf_dp_agents.bench.predict_rows`: predict() milliseconds per chunk per setting
- :mod:`~rf_dp_agents.bench.predict_user`: predict() as users call it, a fresh process per figure
  (``scripts/benchmark_predict_user.py`` and the user-path rows of ``scripts/benchmark.py``)
- :mod:`~rf_dp_agents.bench.report`: ratios, goals, and the README's performance table
- :mod:`~rf_dp_agents.bench.suite`: the whole benchmark run of ``scripts/benchmark.py``
- :mod:`~rf_dp_agents.bench.parts`: the parts of a step and of predict() (``scripts/benchmark_split.py``)
- :mod:`~rf_dp_agents.bench.env_steps`: env steps per second (``scripts/benchmark_env.py``; the one module that
  meets the simulator, imported when it runs)
- :mod:`~rf_dp_agents.bench.gpu_predict_checks`, :mod:`~rf_dp_agents.bench.gpu_trainer_checks`: the CUDA-path
  checks of ``scripts/check_gpu_predict.py`` and ``scripts/check_gpu_trainer.py``

Importing the package imports none of them.
"""

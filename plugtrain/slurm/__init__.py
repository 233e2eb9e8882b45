"""Training on a SLURM cluster: ``plugtrain submit`` writes an sbatch script and submits it; every task of the job
runs :mod:`plugtrain.slurm.worker`, which sets the torch.distributed environment from SLURM's variables, resumes a
requeued job from its ``last.pt`` by itself, and on the warning signal (``--signal``) or SIGTERM stops at the next
step boundary, writes ``last.pt`` and requeues the job (``scontrol requeue``), within a requeue limit.

Why ``sbatch`` directly and not ``submitit``: the job is one plain script a SLURM user can read, keep and edit
(``--dry-run`` prints it), one ``srun`` task per GPU needs no pickled closure or extra package on the cluster, and
the requeue logic lives in plugtrain's own stop-at-a-step-boundary path, which submitit's checkpointing would
duplicate. :mod:`.job` holds the options and the script, :mod:`.cluster` the questions asked to SLURM.
"""

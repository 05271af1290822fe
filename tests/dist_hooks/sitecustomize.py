"""Test hooks for the processes test_distributed.py starts (this folder goes first on their
PYTHONPATH, so Python imports this file at start-up). Inert unless the variables are set:

``VAEKIT_TEST_DUMP=DIR``: after every epoch each rank writes its live weights and Adam state to
``DIR/rank<R>.safetensors``. ``VAEKIT_TEST_KILL_AFTER=E``: rank 1 kills itself with SIGKILL (no
clean-up at all) right after epoch E, as a crashed machine would."""

import os

if os.environ.get("VAEKIT_TEST_DUMP") or os.environ.get("VAEKIT_TEST_KILL_AFTER"):
    import signal

    from safetensors.torch import save_file

    from vaekit.training import trainer as _trainer

    _end_epoch = _trainer.Trainer._end_epoch

    def _end_epoch_with_hooks(self, epoch, rec):
        _end_epoch(self, epoch, rec)
        dump = os.environ.get("VAEKIT_TEST_DUMP")
        if dump:
            state = {f"model.{k}": v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
            for name, opt in self.opts.items():
                state.update({f"optim.{name}.{k}": v.clone() for k, v in opt.state_tensors().items()})
            save_file(state, os.path.join(dump, f"rank{self.world.rank}.safetensors"))
        kill = os.environ.get("VAEKIT_TEST_KILL_AFTER")
        if kill and int(kill) == epoch + 1 and self.world.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    _trainer.Trainer._end_epoch = _end_epoch_with_hooks

"""doit's run command with one more parallel type, `-P dask` (tasks/dask_run.py); registered in doit.cfg.

doit loads this before dodo.py, so it imports nothing of crtforge's until it runs: dodo.py's folder decides which
checkout's tasks/ a build uses (a copy of the project run from another folder must use its own).
"""

from doit.cmd_run import Run


class DaskRun(Run):
    def _execute(self, outfile, verbosity=None, always=False, continue_=False, reporter="console", num_process=0,
                 par_type="process", single=False, auto_delayed_regex=False, force_verbosity=False,
                 failure_verbosity=0, pdb=False):
        if par_type != "dask":
            return super()._execute(outfile, verbosity, always, continue_, reporter, num_process, par_type, single,
                                    auto_delayed_regex, force_verbosity, failure_verbosity, pdb)
        from tasks import dask_run

        return dask_run.execute(self, outfile, verbosity, always, continue_, reporter, num_process,
                                auto_delayed_regex, force_verbosity, failure_verbosity)

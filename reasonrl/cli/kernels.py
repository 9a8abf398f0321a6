"""`reasonrl kernel-agent`: the GEAK loop over an OpenAI-compatible endpoint (reasonrl/agents/geak)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reasonrl.cli.flags import add_flags, values


def kernel_agent(parser: argparse.ArgumentParser):
    from reasonrl.agents.geak.config import AgentConfig
    from reasonrl.envs.kernels.evaluate import EvaluatorConfig, SandboxLimits
    from reasonrl.envs.kernels.evaluate.timing import TimingConfig

    add_flags(parser, AgentConfig, title="agent (AgentConfig)")
    add_flags(parser, EvaluatorConfig, title="evaluator (EvaluatorConfig)")
    add_flags(parser, SandboxLimits, title="sandbox, per candidate (SandboxLimits)")
    add_flags(parser, TimingConfig, title="GPU timing (TimingConfig)")

    def run(args) -> int:
        from reasonrl.agents.geak import run_agent
        from reasonrl.agents.geak.log import SandboxFailure
        from reasonrl.envs.kernels.evaluate import KernelEvaluator
        from reasonrl.eval.client import EndpointError

        config = AgentConfig(**values(args, AgentConfig))
        evaluator = KernelEvaluator(EvaluatorConfig(**values(args, EvaluatorConfig)),
                                    SandboxLimits(**values(args, SandboxLimits)), TimingConfig(**values(args, TimingConfig)))
        try:
            run_agent(config, evaluator=evaluator)
        except (EndpointError, SandboxFailure) as exc:
            print(f"reasonrl kernel-agent: {exc}; the log in {config.out} keeps what was done: rerun the same "
                  "command to resume", file=sys.stderr)
            return 1
        finally:
            evaluator.close()
        summary = Path(config.out) / "summary.md"
        print(summary)
        print(summary.read_text())
        return 0

    return run

"""Everything one running simulator holds, shared by its routes and its server loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from foreman.simulator.backend import SimulatedGPU
from foreman.simulator.config import SimulatorConfig
from foreman.simulator.faults import FaultBoard, Outage


@dataclass
class Simulator:
    config: SimulatorConfig
    gpu: SimulatedGPU = field(init=False)
    faults: FaultBoard = field(default_factory=FaultBoard)
    outage: Outage = field(default_factory=Outage)

    def __post_init__(self) -> None:
        self.gpu = SimulatedGPU(self.config)

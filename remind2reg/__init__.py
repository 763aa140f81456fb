"""remind2reg: brain MRI to intra-operative ultrasound registration (Learn2Reg ReMIND2Reg)."""

__version__ = "0.1.0"

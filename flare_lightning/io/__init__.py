"""Files written for users outside training: VTK fields for ParaView."""

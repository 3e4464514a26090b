"""The keeper: pure decision logic (`logic`), one block's plan shared with the simulator
(`step`), the bot around it (`bot`), its Silverback runner (`runtime`), transaction sending
(`tx`), the bots' process helper (`procs`) and the audit of a run's history (`audit`)."""

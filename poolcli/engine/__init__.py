"""The engine: one object per task (plan + model + batch template) that turns a block of rows or pairs into that
task's table and error rows; plans, tokenization, scheduling and the shared batch template. No files, no parts."""

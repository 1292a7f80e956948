"""The learner side: batch collation, losses, and (later) the LearnerWorker."""

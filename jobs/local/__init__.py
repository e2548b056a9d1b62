"""Entry points that run the platform on one machine: an embedded Airflow home (``airflow_local``)
and the ``lockstep demo`` driver (``demo``)."""

"""Programs run as processes of their own by the background-task tests: Prefect's delay side
and task worker, with the tasks both import.
"""
